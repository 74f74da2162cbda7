//go:build unix

package fault

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode"
	"github.com/cachebus/cachebus/e2e/harness"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// Settings of TestSecurity's records part: the record key and a wrong one,
// 32 bytes in base64 each.
const (
	secRecordKey   = "c2VjLXJlY29yZC1rZXktMDEyMzQ1Njc4OWFiY2RlZjA=" // "sec-record-key-0123456789abcdef0"
	secWrongKey    = "d3Jvbmcta2V5LTAxMjM0NTY3ODlhYmNkZWYwMTIzNDU=" // "wrong-key-0123456789abcdef012345"
	secRecords     = 50
	secRecordsNode = "sec1"
)

// testSecRecords writes long-term records through a cache node that seals
// them with secRecordKey, reads the record log's raw messages from
// JetStream and finds no value in them (while the key opens every one),
// restarts the node with a wrong key, which must say why it cannot read
// them, serve on and return none of them, then with the right key again
// (the wrong one as the previous key): every record is back.
func testSecRecords(t *testing.T, b *secBus) {
	node := harn.StartCacheNodesWith(t, b.nats.URL, b.env(map[string]string{
		"CACHEBUS_LONG_TERM":  harness.RecordsNS,
		"CACHEBUS_RECORD_KEY": secRecordKey,
	}), secRecordsNode)[0]
	node.WaitReady(t, 30*time.Second)
	ctx := secCtx(t, 60*time.Second)
	cl, err := cachenode.NewClient(ctx, b.full, cachenode.ClientOptions{FailureTimeout: harness.NodeFailureTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)

	ns := harness.RecordsNS
	values := map[string]string{}
	keys := make([]string, 0, secRecords)
	for i := range secRecords {
		k := fmt.Sprintf("session:%03d", i)
		values[k] = fmt.Sprintf("plaintext-token-%03d-must-not-be-stored-in-clear", i)
		keys = append(keys, k)
	}
	bustest.WaitFor(t, 15*time.Second, "the first long-term write to be acknowledged", func() bool {
		_, err := cl.Put(secCtx(t, 2*time.Second), ns, keys[0], []byte(values[keys[0]]), time.Hour)
		return err == nil
	})
	for _, k := range keys[1:] {
		if _, err := cl.Put(ctx, ns, k, []byte(values[k]), time.Hour); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}

	// The raw messages of the record log, as anyone allowed to read the
	// stream sees them.
	raw := secRawRecords(t, b.full)
	plain, sealed := 0, 0
	for _, m := range raw {
		for _, v := range values {
			if bytes.Contains(m.Data, []byte(v)) || strings.Contains(fmt.Sprint(m.Header), v) {
				plain++
				break
			}
		}
		if strings.Contains(m.Header.Get(persistence.RecordHeader), " kid=") {
			sealed++
		}
	}
	Check(t, "raw record messages read from JetStream", len(raw), fmt.Sprintf("= %d", secRecords), len(raw) == secRecords)
	Check(t, "raw record messages holding a value in clear", plain, "= 0", plain == 0)
	Check(t, "raw record messages sealed (kid= in Cachebus-Record)", sealed, fmt.Sprintf("= %d", len(raw)), sealed == len(raw))
	for _, c := range []struct {
		name, key, previous string
		opens               bool
	}{
		{"no key", "", "", false},
		{"the wrong key", secWrongKey, "", false},
		{"the right key", secRecordKey, "", true},
	} {
		codec, err := persistence.NewRecordCodec(b.full.Subjects, c.key, c.previous)
		if err != nil {
			t.Fatal(err)
		}
		opened, unknownKey := 0, 0
		for _, m := range raw {
			r, err := codec.Decode(m.Subject, m.Header, m.Data)
			switch {
			case err == nil && string(r.Value) == values[r.Key]:
				opened++
			case errors.Is(err, persistence.ErrRecordKeyUnknown):
				unknownKey++
			}
		}
		if c.opens {
			Check(t, "raw records opened with "+c.name, opened, fmt.Sprintf("= %d, each its value", len(raw)), opened == len(raw))
		} else {
			Check(t, "raw records opened with "+c.name, opened, fmt.Sprintf("= 0 (%d refused: unknown key)", unknownKey), opened == 0 && unknownKey == len(raw))
		}
	}

	// The node with a wrong key: it says why, serves on, returns nothing
	// it cannot open.
	node.P.Terminate(20 * time.Second)
	node.Env["CACHEBUS_RECORD_KEY"] = secWrongKey
	node.Start(t)
	node.WaitReady(t, 30*time.Second)
	why := node.P.WaitLine(10*time.Second, regexp.MustCompile(`record replay: skipped a bad message.*reason=key.*`))[0]
	skipped := node.P.WaitLine(10*time.Second, regexp.MustCompile(`bad messages skipped in the record log.*rejected=(\d+)`))[1]
	Check(t, "wrong key: records the node reports it cannot open", skipped, fmt.Sprintf("= %d", secRecords), skipped == fmt.Sprint(secRecords))
	Figure(t, "wrong key: what the node says", secClip(why, 320), "its first warning")
	var got map[string]cachenode.Record
	bustest.WaitFor(t, 15*time.Second, "a read of every key from the node with the wrong key", func() bool {
		got, err = cl.GetMulti(secCtx(t, 2*time.Second), ns, keys)
		return err == nil
	})
	Check(t, "wrong key: records served", len(got), "= 0 (not the sealed bytes, not an error)", len(got) == 0)
	fresh := "written-under-the-wrong-key"
	if _, err := cl.Put(ctx, ns, fresh, []byte(fresh), time.Hour); err != nil {
		t.Fatalf("put on the node with the wrong key: %v", err)
	}
	rec, err := cl.Get(ctx, ns, fresh)
	served := err == nil && string(rec.Value) == fresh
	Check(t, "wrong key: the node serves on (a new record written and read)", served, "= true", served && !node.P.Exited())

	// The right key again, the wrong one as the previous key: nothing was
	// lost, nothing overwritten.
	node.P.Terminate(20 * time.Second)
	node.Env["CACHEBUS_RECORD_KEY"] = secRecordKey
	node.Env["CACHEBUS_RECORD_KEY_PREVIOUS"] = secWrongKey
	node.Start(t)
	node.WaitReady(t, 30*time.Second)
	bustest.WaitFor(t, 15*time.Second, "a read of every key from the node with the right key", func() bool {
		got, err = cl.GetMulti(secCtx(t, 2*time.Second), ns, append(keys, fresh))
		return err == nil
	})
	back := 0
	for _, k := range keys {
		if r, ok := got[k]; ok && string(r.Value) == values[k] {
			back++
		}
	}
	if r, ok := got[fresh]; ok && string(r.Value) == fresh {
		back++
	}
	Check(t, "right key again: records read back", back, fmt.Sprintf("= %d (with the one sealed under the wrong key)", secRecords+1), back == secRecords+1)
}

// secRawRecords reads every message of the record log, as stored.
func secRawRecords(t *testing.T, c *bus.Conn) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := secCtx(t, 20*time.Second)
	st, err := c.JS.Stream(ctx, c.Subjects.BucketName("CACHEBUS_RECORDS"))
	if err != nil {
		t.Fatalf("the record log: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("record log message %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}
