// Package auth mints and checks the API's bearer tokens: JWTs signed with
// HMAC (HS256 when minted here) with the daemon's secret. Tokens carry
// sub, iat and exp. Registry and build tokens (with repos, scope or
// build_id claims) are not API tokens and are refused.
package auth

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Errors a token check returns; their text is what clients see.
var (
	ErrMissing    = errors.New("authorization header required")
	ErrFormat     = errors.New("invalid authorization header format")
	ErrInvalid    = errors.New("invalid token")
	ErrWrongUsage = errors.New("invalid token type")
)

// Mint returns a token for subject valid for ttl.
func Mint(secret, subject string, ttl time.Duration) (string, error) {
	now := time.Now()
	claims := jwt.RegisteredClaims{
		Subject:   subject,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("auth: mint: %w", err)
	}
	return s, nil
}

// Verifier checks tokens against one secret.
type Verifier struct {
	secret []byte
}

// NewVerifier returns a Verifier for secret.
func NewVerifier(secret string) *Verifier { return &Verifier{secret: []byte(secret)} }

// Verify checks a raw token and returns its subject.
func (v *Verifier) Verify(token string) (string, error) {
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		if _, ok := t.Method.(*jwt.SigningMethodHMAC); !ok {
			return nil, ErrInvalid
		}
		return v.secret, nil
	})
	if err != nil {
		return "", ErrInvalid
	}
	for _, k := range []string{"repos", "scope", "build_id"} {
		if _, ok := claims[k]; ok {
			return "", ErrWrongUsage
		}
	}
	sub, _ := claims["sub"].(string)
	return sub, nil
}

// VerifyRequest checks the request's "Authorization: Bearer <token>".
func (v *Verifier) VerifyRequest(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", ErrMissing
	}
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(token) == "" {
		return "", ErrFormat
	}
	return v.Verify(strings.TrimSpace(token))
}
