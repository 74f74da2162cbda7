// Command go-expire expires cache entries everywhere, from Go, with only
// the NATS client (github.com/nats-io/nats.go) and none of cachebus's
// packages: for programs that do not want our library.
//
//	go run ./docs/examples/go users user:42 user:43
//	go run ./docs/examples/go -prefix cart:42: -tag profile users
//	CACHEBUS_NATS_URL=nats://10.0.0.1:4222 go run ./docs/examples/go http /products/42
//
// It sends the JSON Expire payload of docs/PROTOCOL.md to
// <prefix>.expire.<ns> as a JetStream publish with a Nats-Msg-Id and
// waits for the event log's acknowledgement: once it prints "stored at
// seq N", every cache node, memo client and gateway drops the entries, at
// once if connected, else when it reconnects. Exit status 0: stored; 1:
// not stored; 2: bad arguments.
//
// Variables, as the cachebus commands read them: CACHEBUS_NATS_URL
// (default nats://127.0.0.1:4222), CACHEBUS_NATS_USER,
// CACHEBUS_NATS_PASSWORD, CACHEBUS_NATS_TOKEN, CACHEBUS_NATS_CREDS,
// CACHEBUS_PREFIX (default cachebus).
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// expire is the Expire payload, version 1.
type expire struct {
	V        int       `json:"v"`
	Keys     []string  `json:"keys,omitempty"`
	Prefixes []string  `json:"prefixes,omitempty"`
	Tags     []string  `json:"tags,omitempty"`
	All      bool      `json:"all,omitempty"`
	Origin   string    `json:"origin,omitempty"`
	TS       time.Time `json:"ts"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var prefixes, tags list
	flag.Var(&prefixes, "prefix", "expire every key starting with this (repeatable)")
	flag.Var(&tags, "tag", "expire every entry with this tag (repeatable)")
	all := flag.Bool("all", false, "expire the whole namespace")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [-prefix P]... [-tag T]... [-all] <namespace> [key...]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 1 {
		flag.Usage()
		os.Exit(2)
	}
	ns := flag.Arg(0)
	e := expire{V: 1, Keys: flag.Args()[1:], Prefixes: prefixes, Tags: tags, All: *all,
		Origin: "go-example", TS: time.Now().UTC()}
	if err := check(ns, e); err != nil {
		fmt.Fprintln(os.Stderr, "go-expire:", err)
		os.Exit(2)
	}
	seq, err := publish(ns, e)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-expire:", err)
		os.Exit(1)
	}
	fmt.Printf("expire %s stored at seq %d\n", subject(ns), seq)
}

// check refuses here what every receiver would reject: a message the
// log stores but nobody applies is worse than an error now.
func check(ns string, e expire) error {
	if !nameRE.MatchString(ns) {
		return fmt.Errorf("namespace %q must match [A-Za-z0-9_-]{1,64}", ns)
	}
	if len(e.Keys) == 0 && len(e.Prefixes) == 0 && len(e.Tags) == 0 && !e.All {
		return errors.New("give at least one key, -prefix, -tag or -all")
	}
	for _, items := range [][]string{e.Keys, e.Prefixes, e.Tags} {
		for _, k := range items {
			if len(k) == 0 || len(k) > 1024 {
				return fmt.Errorf("%q: keys, prefixes and tags are 1 to 1024 bytes", k)
			}
		}
	}
	return nil
}

func subject(ns string) string {
	prefix := os.Getenv("CACHEBUS_PREFIX")
	if prefix == "" {
		prefix = "cachebus"
	}
	return prefix + ".expire." + ns
}

// publish sends e through JetStream and returns its sequence in the log.
func publish(ns string, e expire) (uint64, error) {
	url := os.Getenv("CACHEBUS_NATS_URL")
	if url == "" {
		url = nats.DefaultURL
	}
	opts := []nats.Option{nats.Name("go-expire")}
	if u := os.Getenv("CACHEBUS_NATS_USER"); u != "" {
		opts = append(opts, nats.UserInfo(u, os.Getenv("CACHEBUS_NATS_PASSWORD")))
	}
	if tok := os.Getenv("CACHEBUS_NATS_TOKEN"); tok != "" {
		opts = append(opts, nats.Token(tok))
	}
	if creds := os.Getenv("CACHEBUS_NATS_CREDS"); creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return 0, fmt.Errorf("connect to %s: %w", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, fmt.Errorf("jetstream: %w", err)
	}
	data, err := json.Marshal(e)
	if err != nil {
		return 0, fmt.Errorf("encode: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// One id for every attempt: the log keeps one copy of a retried
	// publish whose acknowledgement was lost.
	id := rand.Text()
	var ack *jetstream.PubAck
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		ack, err = js.Publish(actx, subject(ns), data, jetstream.WithMsgID(id))
		acancel()
		// An API error (message too large, say) will not change on a
		// retry; a timeout or no responders (no leader yet) may.
		var apiErr *jetstream.APIError
		if err == nil || errors.As(err, &apiErr) || ctx.Err() != nil {
			break
		}
		// A publish the server refuses (NATS permissions) gets no reply:
		// it shows as a timeout, and as the connection's last error.
		if last := nc.LastError(); errors.Is(last, nats.ErrPermissionViolation) {
			err = last
			break
		}
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
	if err != nil {
		return 0, fmt.Errorf("%s not stored: %w", subject(ns), err)
	}
	return ack.Sequence, nil
}
