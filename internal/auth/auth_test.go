package auth

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestMintVerify(t *testing.T) {
	tok, err := Mint("s3cret", "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier("s3cret")
	if sub, err := v.Verify(tok); err != nil || sub != "alice" {
		t.Fatalf("Verify = %q, %v", sub, err)
	}
	if _, err := NewVerifier("other").Verify(tok); err != ErrInvalid {
		t.Fatalf("wrong secret: %v", err)
	}
	expired, _ := Mint("s3cret", "alice", -time.Minute)
	if _, err := v.Verify(expired); err != ErrInvalid {
		t.Fatalf("expired: %v", err)
	}
	reg, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "x", "repos": []string{"a"}}).SignedString([]byte("s3cret"))
	if _, err := v.Verify(reg); err != ErrWrongUsage {
		t.Fatalf("registry token: %v", err)
	}
}

func TestVerifyRequestHeaders(t *testing.T) {
	v := NewVerifier("k")
	tok, _ := Mint("k", "bob", time.Hour)
	cases := map[string]error{"": ErrMissing, "Basic abc": ErrFormat, "Bearer": ErrFormat, "bearer " + tok: nil, "Bearer junk": ErrInvalid}
	for h, want := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		if h != "" {
			r.Header.Set("Authorization", h)
		}
		if _, err := v.VerifyRequest(r); err != want {
			t.Errorf("header %q: err %v, want %v", h, err, want)
		}
	}
}
