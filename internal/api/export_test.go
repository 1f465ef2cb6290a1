package api

import "testing"

// FakeGuestServer is the API with a fake guest behind instance "vm", for
// the tests of package api_test (which can import the CLI).
type FakeGuestServer struct{ e *agentEnv }

func NewFakeGuestServer(t *testing.T) *FakeGuestServer { return &FakeGuestServer{newAgentEnv(t)} }

func (s *FakeGuestServer) URL() string   { return s.e.srv.URL }
func (s *FakeGuestServer) Token() string { return s.e.token }

// File returns a guest file's content and mode.
func (s *FakeGuestServer) File(p string) (data string, mode uint32, ok bool) {
	f := s.e.guest.get(p)
	if f == nil {
		return "", 0, false
	}
	return string(f.data), f.mode, true
}
