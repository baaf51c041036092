package main

// What `mdc serve` tells the API about its roles (GET /api/v1/roles), and
// the `mdc roles list|show` commands (docs/roles.md).

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/machine"
	"github.com/microdc/mdc/policy"
	"github.com/microdc/mdc/roles"
)

// Names implements api.RoleStatus: the roles mdc runs.
func (r *roleSide) Names() []string { return r.reg.Names() }

// Describe implements api.RoleStatus.
func (r *roleSide) Describe(ctx context.Context, name string) (roles.Status, bool, error) {
	x, ok := r.reg.Get(name)
	if !ok {
		return roles.Status{}, false, nil
	}
	d, ok := x.(roles.Describer)
	if !ok {
		return roles.Status{Name: name, Summary: "mdc runs this role; it does not describe its cluster"}, true, nil
	}
	st, err := d.Describe(ctx)
	st.Name = name
	return st, true, err
}

// status is the roles side as GET /api/v1/roles sees it, with the roles
// the policy names.
func (r *roleSide) status(p *policy.Policy) api.RoleStatus {
	return roleStatus{roleSide: r, policy: p}
}

type roleStatus struct {
	*roleSide
	policy *policy.Policy
}

// PolicyRoles implements api.RoleStatus: the roles of the policy's rules,
// its default and its role settings.
func (s roleStatus) PolicyRoles() []string {
	if s.policy == nil {
		return nil
	}
	var out []string
	add := func(n string) {
		if n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	for _, r := range s.policy.Rules {
		add(r.Role)
	}
	add(s.policy.Default)
	for n := range s.policy.Roles {
		add(n)
	}
	sort.Strings(out)
	return out
}

const rolesHelp = `Usage: mdc roles list | show NAME

  list        the roles mdc knows: those it runs (with a cluster), the role
              policy's, those machines carry; what each cluster says, and
              the machines of each role by state
  show NAME   one role: its cluster's settings (never a secret) and members,
              and its machines with how each one's join goes

`

func rolesCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, rolesHelp)
		return usagef("roles: which subcommand? (list, show)")
	}
	args = commandFirst(args, []string{"list", "show"})
	sub := args[0]
	c, pos, err := newClientCmd("roles "+sub, rolesHelp, args[1:], stderr, getenv, nil)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		if len(pos) != 0 {
			return usagef("roles list takes no arguments, got %q", pos)
		}
		var list api.RoleList
		if err := c.call(ctx, "GET", "/api/v1/roles", nil, &list); err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, list)
		}
		return printRoles(stdout, list.Roles)
	case "show":
		if len(pos) != 1 {
			return usagef("roles show takes 1 argument (the role's name), got %d", len(pos))
		}
		var d api.RoleDetail
		if err := c.call(ctx, "GET", "/api/v1/roles/"+url.PathEscape(pos[0]), nil, &d); err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, d)
		}
		return printRole(stdout, d)
	}
	return usagef("roles: unknown subcommand %q (list, show)", sub)
}

// cluster is the CLUSTER column of a role.
func cluster(r api.RoleSummary) string {
	switch {
	case r.Error != "":
		return "cannot describe: " + r.Error
	case !r.Cluster:
		return "none (a join is the node's word)"
	}
	return r.Summary
}

// byState is "2 joined, 1 running", in lifecycle order.
func byState(n map[machine.State]int) string {
	var parts []string
	for _, s := range machine.States() {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func printRoles(w io.Writer, rs []api.RoleSummary) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tCLUSTER\tMACHINES")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, cluster(r), byState(r.Machines))
	}
	return tw.Flush()
}

func printRole(w io.Writer, d api.RoleDetail) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Role:\t%s\n", d.Name)
	fmt.Fprintf(tw, "Cluster:\t%s\n", cluster(d.RoleSummary))
	fmt.Fprintf(tw, "Machines:\t%s\n", byState(d.Machines))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(d.Settings) > 0 {
		fmt.Fprintln(w, "\nSettings:")
		keys := make([]string, 0, len(d.Settings))
		for k := range d.Settings {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%s\n", k, d.Settings[k])
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(d.Members) > 0 {
		fmt.Fprintln(w, "\nMembers (as the cluster knows them):")
		for _, m := range d.Members {
			fmt.Fprintf(tw, "  %s\t%s\n", m.Machine, m.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w, "\nNodes:")
	if len(d.Nodes) == 0 {
		fmt.Fprintln(w, "  no machine has this role")
		return nil
	}
	fmt.Fprintln(tw, "  ID\tNAME\tSTATE\tJOIN")
	for _, m := range d.Nodes {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", m.ID, dash(m.Name), m.State, dash(joinText(m.Join)))
	}
	return tw.Flush()
}

// joinText says how a join goes, in one line ("" for none).
func joinText(j *api.JoinStatus) string {
	if j == nil {
		return ""
	}
	clock := func(t time.Time) string { return t.Local().Format(time.TimeOnly) }
	switch j.State {
	case api.JoinConfiguring:
		return "the node fetched its role configuration at " + clock(j.ConfiguredAt) + "; it has not reported joined yet"
	case api.JoinWaiting:
		s := "waiting for the cluster"
		if !j.ReportedAt.IsZero() {
			s += fmt.Sprintf(" (%s)", time.Since(j.ReportedAt).Round(time.Second))
		}
		if j.Reason != "" {
			s += ": " + j.Reason
		}
		return s
	case api.JoinConfirmed:
		return "confirmed by the cluster " + clock(j.ConfirmedAt)
	case api.JoinNodesWord:
		return "reported by the node " + clock(j.ConfirmedAt) + " (role " + j.Role + " has no cluster to ask)"
	case api.JoinFailed:
		return "failed: " + j.Reason
	}
	return j.State
}
