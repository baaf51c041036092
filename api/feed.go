package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/microdc/mdc/events"
	"github.com/microdc/mdc/machine"
)

// errCaughtUp ends a feed that was asked not to follow.
var errCaughtUp = errors.New("caught up")

// eventFeed streams lifecycle events as Server-Sent Events. Each event's SSE
// id is its stream sequence, so a client resumes with ?since=SEQ+1 or the
// Last-Event-ID header. Without since it starts with new events only.
//
//	?since=SEQ    first sequence to send (1: the whole log)
//	?machine=ID   one machine only
//	?follow=false stop once caught up instead of waiting for new events
func (s *Server) eventFeed(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	for k := range q {
		switch k {
		case "since", "machine", "follow":
		default:
			writeError(w, errorf(http.StatusBadRequest, CodeBadRequest, "unknown query parameter %q (since, machine, follow)", k))
			return
		}
	}
	last, err := s.cfg.Machines.LastSeq(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	from := last + 1
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "Last-Event-ID %q is not a sequence number", v))
			return
		}
		from = n + 1
	}
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "since=%q: want a sequence number from 1", v))
			return
		}
		from = n
	}
	follow := true
	if v := q.Get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, errorf(http.StatusBadRequest, CodeInvalidValue, "follow=%q: want true or false", v))
			return
		}
		follow = b
	}
	var id machine.ID
	var filter string
	if v := q.Get("machine"); v != "" {
		if id, err = machine.ParseID(v); err != nil {
			writeError(w, errorf(http.StatusBadRequest, CodeInvalidMAC, "machine: %v", err))
			return
		}
		filter = events.MachineFilter(id)
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errorf(http.StatusInternalServerError, CodeInternal, "streaming is not supported by this connection"))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()

	var mu sync.Mutex // the keep-alive and the events share the writer
	send := func(e machine.Event) error {
		b, err := events.Encode(e)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Type, b); err != nil {
			return err
		}
		flusher.Flush()
		return nil
	}

	if !follow {
		s.feedOnce(r.Context(), from, last, id, send)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer context.AfterFunc(s.feeds, cancel)()
	var wg sync.WaitGroup
	defer wg.Wait() // the keep-alive must not write after the handler returns
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(s.cfg.KeepAlive)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				mu.Lock()
				_, err := fmt.Fprint(w, ": keep-alive\n\n")
				if err == nil {
					flusher.Flush()
				}
				mu.Unlock()
				if err != nil {
					cancel()
					return
				}
			}
		}
	}()
	err = s.cfg.Machines.Follow(ctx, from, filter, func(e machine.Event, _ uint64) error { return send(e) })
	if err != nil && ctx.Err() == nil {
		s.log.Warn("event feed ended", "err", err)
	}
}

// feedOnce sends what is stored from sequence from up to last, then returns.
func (s *Server) feedOnce(ctx context.Context, from, last uint64, id machine.ID, send func(machine.Event) error) {
	if from > last {
		return
	}
	if id != "" {
		// One machine's history is small; reading it avoids waiting on a
		// consumer that may have nothing left to deliver.
		history, err := s.cfg.Machines.History(ctx, id)
		if err != nil {
			s.log.Warn("event feed", "err", err)
			return
		}
		for _, e := range history {
			if e.Seq >= from && e.Seq <= last {
				if send(e) != nil {
					return
				}
			}
		}
		return
	}
	err := s.cfg.Machines.Follow(ctx, from, "", func(e machine.Event, _ uint64) error {
		if e.Seq > last {
			return errCaughtUp
		}
		if err := send(e); err != nil {
			return err
		}
		if e.Seq == last {
			return errCaughtUp
		}
		return nil
	})
	if err != nil && !errors.Is(err, errCaughtUp) && ctx.Err() == nil {
		s.log.Warn("event feed ended", "err", err)
	}
}
