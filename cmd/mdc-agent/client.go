package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/microdc/mdc/api/agentapi"
)

// errRefused: mdc refused the token (401/403). Nothing a retry can fix;
// the agent exits with status 3.
var errRefused = errors.New("mdc refused this machine's token")

// httpError is an answer a retry cannot change (400, 404, 409 …).
type httpError struct {
	status        int
	code, message string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("mdc answered %d %s: %s", e.status, e.code, e.message)
}

// backoff is exponential with jitter: attempt n waits a random time in
// [d/2, d] with d = Min·2ⁿ capped at Max.
type backoff struct {
	Min, Max time.Duration
}

func (b backoff) delay(attempt int) time.Duration {
	d := b.Min
	for i := 0; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// client talks to mdc's agent API as one machine.
type client struct {
	base    string
	machine string
	token   string
	http    *http.Client
	backoff backoff
	log     *slog.Logger
	// sleep waits d or until ctx ends (tests make it instant).
	sleep func(ctx context.Context, d time.Duration) error
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// do sends one request, retrying until mdc answers it: network errors, 5xx,
// 408, 409 (another writer moved the machine) and 429 are retried with
// backoff (and Retry-After); 401/403 end in errRefused; other answers
// are returned as *httpError.
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return err
		}
	}
	for attempt := 0; ; attempt++ {
		wait, err := c.once(ctx, method, path, payload, out)
		if err == nil {
			if attempt > 0 {
				c.log.Info("mdc answered", "request", method+" "+path, "attempts", attempt+1)
			}
			return nil
		}
		var he *httpError
		if errors.Is(err, errRefused) || errors.As(err, &he) || ctx.Err() != nil {
			return err
		}
		d := c.backoff.delay(attempt)
		if wait > d {
			d = min(wait, c.backoff.Max)
		}
		c.log.Warn("mdc unreachable, retrying", "request", method+" "+path, "attempt", attempt+1, "in", d.Round(time.Millisecond), "err", err)
		if err := c.sleep(ctx, d); err != nil {
			return err
		}
	}
}

// once sends a request; wait is what Retry-After asked for.
func (c *client) once(ctx context.Context, method, path string, payload []byte, out any) (wait time.Duration, err error) {
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set(agentapi.HeaderMachine, c.machine)
	req.Header.Set("User-Agent", "mdc-agent/"+version)
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode == http.StatusOK {
		if out == nil {
			return 0, nil
		}
		if err := json.Unmarshal(b, out); err != nil {
			return 0, fmt.Errorf("%s %s: mdc's answer is not what this agent understands: %w", method, path, err)
		}
		return 0, nil
	}
	var e agentapi.Error
	_ = json.Unmarshal(b, &e)
	if e.Error.Code == "" {
		e.Error.Code, e.Error.Message = http.StatusText(resp.StatusCode), string(bytes.TrimSpace(b[:min(len(b), 200)]))
	}
	switch s := resp.StatusCode; {
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		return 0, fmt.Errorf("%w: %s (%s)", errRefused, e.Error.Message, e.Error.Code)
	case s >= 500 || s == http.StatusRequestTimeout || s == http.StatusTooManyRequests ||
		s == http.StatusConflict && e.Error.Code == "conflict":
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			wait = time.Duration(secs) * time.Second
		}
		return wait, fmt.Errorf("%d %s: %s", s, e.Error.Code, e.Error.Message)
	default:
		return 0, &httpError{status: s, code: e.Error.Code, message: e.Error.Message}
	}
}
