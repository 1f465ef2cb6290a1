package initd

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// lookupUser resolves an OCI config user ("", "name", "uid", "uid:gid",
// "name:group") against the image's /etc/passwd and /etc/group. It returns
// nil credentials for root and the user's home directory.
func lookupUser(spec string) (*syscall.Credential, string, error) {
	if spec == "" || spec == "root" || spec == "0" || spec == "0:0" {
		return nil, "/root", nil
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	uid, gid, home, err := resolveUser(userPart)
	if err != nil {
		return nil, "", err
	}
	if hasGroup {
		if gid, err = resolveGroup(groupPart); err != nil {
			return nil, "", err
		}
	}
	return &syscall.Credential{Uid: uid, Gid: gid}, home, nil
}

func resolveUser(u string) (uid, gid uint32, home string, err error) {
	home = "/"
	n, numErr := strconv.ParseUint(u, 10, 32)
	found := false
	forEachEntry("/etc/passwd", func(f []string) bool {
		if len(f) < 6 {
			return false
		}
		if f[0] == u || (numErr == nil && f[2] == u) {
			id, _ := strconv.ParseUint(f[2], 10, 32)
			g, _ := strconv.ParseUint(f[3], 10, 32)
			uid, gid, home, found = uint32(id), uint32(g), f[5], true
			return true
		}
		return false
	})
	if found {
		return uid, gid, home, nil
	}
	if numErr == nil {
		return uint32(n), uint32(n), home, nil
	}
	return 0, 0, "", fmt.Errorf("user %q not found in /etc/passwd", u)
}

func resolveGroup(g string) (uint32, error) {
	if n, err := strconv.ParseUint(g, 10, 32); err == nil {
		return uint32(n), nil
	}
	var gid uint32
	found := false
	forEachEntry("/etc/group", func(f []string) bool {
		if len(f) >= 3 && f[0] == g {
			n, _ := strconv.ParseUint(f[2], 10, 32)
			gid, found = uint32(n), true
			return true
		}
		return false
	})
	if !found {
		return 0, fmt.Errorf("group %q not found in /etc/group", g)
	}
	return gid, nil
}

// forEachEntry calls fn with the colon-separated fields of each line of
// path until fn returns true.
func forEachEntry(path string, fn func([]string) bool) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fn(strings.Split(sc.Text(), ":")) {
			return
		}
	}
}
