package nats

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

// FuzzCheckUserKey: the nkey a node reports is network input. Only public
// user keys pass, every refusal wraps ErrBadNkey, and a seed sent by mistake
// is never repeated in the error (errors may be logged).
func FuzzCheckUserKey(f *testing.F) {
	u, _ := nkeys.CreateUser()
	pub, _ := u.PublicKey()
	seed, _ := u.Seed()
	a, _ := nkeys.CreateAccount()
	apub, _ := a.PublicKey()
	for _, s := range []string{pub, string(seed), apub, "", "U", "SU", pub[:len(pub)-1], pub + "A"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := string(b)
		err := CheckUserKey(s)
		if (err == nil) != nkeys.IsValidPublicUserKey(s) {
			t.Fatalf("CheckUserKey(%q) = %v", s, err)
		}
		if err != nil && !errors.Is(err, ErrBadNkey) {
			t.Fatalf("CheckUserKey(%q) = %v, not ErrBadNkey", s, err)
		}
		if len(b) < 32 {
			return
		}
		for _, p := range []nkeys.PrefixByte{nkeys.PrefixByteUser, nkeys.PrefixByteAccount, nkeys.PrefixByteOperator} {
			kp, err := nkeys.FromRawSeed(p, b[:32])
			if err != nil {
				t.Fatal(err)
			}
			sd, _ := kp.Seed()
			if err := CheckUserKey(string(sd)); err == nil || strings.Contains(err.Error(), string(sd)) {
				t.Fatalf("a seed: %v", err)
			}
		}
	})
}
