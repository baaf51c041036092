package machine

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
)

// A boot token is minted for each network boot that loads an image: the
// boot script puts it on the kernel command line (mdc.token=) and the agent
// shows it to mdc. Only its SHA-256 is ever stored, in the data of the
// lifecycle event that issued it, so the event log holds nothing that lets
// anyone act as the machine.

// BootToken is the stored half of a boot token: its SHA-256, as 64 hex digits.
type BootToken struct {
	TokenSHA256 string `json:"token_sha256,omitempty"`
}

// NewBootToken returns a fresh random token (256 bits, 64 hex digits) to hand
// to the machine, and the BootToken to store.
func NewBootToken() (token string, stored BootToken) {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux.
	token = hex.EncodeToString(b[:])
	return token, HashBootToken(token)
}

// HashBootToken returns what is stored for token.
func HashBootToken(token string) BootToken {
	sum := sha256.Sum256([]byte(token))
	return BootToken{TokenSHA256: hex.EncodeToString(sum[:])}
}

// Matches reports, in constant time, whether token is the one t was made
// from. An empty BootToken matches nothing.
func (t BootToken) Matches(token string) bool {
	if len(t.TokenSHA256) != 2*sha256.Size || token == "" {
		return false
	}
	want := HashBootToken(token).TokenSHA256
	return subtle.ConstantTimeCompare([]byte(want), []byte(t.TokenSHA256)) == 1
}

// CommissioningBootData is the data of a commissioning_started event that a
// boot script issued: the image served and the hash of the boot's token. It
// decodes as ImageData too, so the fold reads it unchanged.
type CommissioningBootData struct {
	ImageData
	BootToken
}

// ProvisioningBootData is the data of a provisioning_started event that a
// boot script issued: role, image and the hash of the boot's token. It
// decodes as ProvisioningStartedData too.
type ProvisioningBootData struct {
	ProvisioningStartedData
	BootToken
}

// CurrentBootToken returns the token hash of a machine's current boot: the
// one issued by the newest commissioning_started or provisioning_started in
// its history, if that event carried one and nothing has ended the boot
// since (failed or retired). Pure; for the agent API.
func CurrentBootToken(history []Event) (BootToken, bool) {
	var cur BootToken
	for _, e := range history {
		switch e.Type {
		case CommissioningStarted, ProvisioningStarted:
			var t BootToken
			if decode(e, &t) != nil {
				t = BootToken{}
			}
			cur = t
		case Failed, Retired:
			cur = BootToken{}
		}
	}
	return cur, cur.TokenSHA256 != ""
}
