package ipfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/microdc/mdc/roles"
)

var _ roles.Describer = (*Role)(nil)

// Describe is the swarm as mdc knows it: the joined nodes from Peers, and
// the settings nodes get. It names the swarm key only by a fingerprint
// (what `sha256sum swarm.key` prints on a node, cut to 16 digits), so an
// operator can check a node holds the right key without seeing it.
func (r *Role) Describe(ctx context.Context) (roles.Status, error) {
	st := roles.Status{Name: Name}
	all, err := r.peers.List(ctx)
	if err != nil {
		return st, fmt.Errorf("ipfs describe: peers: %w", err)
	}
	sum := sha256.Sum256(r.swarmKey)
	st.Settings = map[string]string{
		"network":          "private swarm (pre-shared key), TCP only, no public bootstrap",
		"swarm_key_sha256": hex.EncodeToString(sum[:8]),
		"swarm_port":       strconv.Itoa(r.cfg.SwarmPort),
		"api_port":         strconv.Itoa(r.cfg.APIPort),
		"repo":             r.cfg.Repo,
		"bootstrap_peers":  strconv.Itoa(len(all)),
	}
	for _, p := range all {
		d := "peer " + p.ID
		if len(p.Addrs) > 0 {
			d += " at " + strings.Join(p.Addrs, ", ")
		}
		st.Members = append(st.Members, roles.Member{Machine: p.Machine, Detail: d})
	}
	switch len(all) {
	case 0:
		st.Summary = "private IPFS swarm: no node joined yet"
	case 1:
		st.Summary = "private IPFS swarm of 1 joined node"
	default:
		st.Summary = fmt.Sprintf("private IPFS swarm of %d joined nodes", len(all))
	}
	return st, nil
}
