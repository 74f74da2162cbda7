package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
)

// TestEchoCounts runs the echo ceiling in process and checks its
// bookkeeping and report, not the speed.
func TestEchoCounts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		responders, clients, per int
	}{{2, 16, 8}, {3, 16, 6}, {1, 1, 1}} {
		res, err := Echo(ctx, EchoConfig{Responders: tc.responders, Clients: tc.clients,
			Duration: 200 * time.Millisecond, Size: 10, Log: bustest.Logger(t)})
		if err != nil {
			t.Fatalf("%d responders, %d clients: %v", tc.responders, tc.clients, err)
		}
		if res.PerMessage != tc.per || res.Messages == 0 || res.Requests != res.Messages*uint64(tc.per) {
			t.Errorf("%d responders, %d clients: %d per message, %d messages, %d requests; want %d per message",
				tc.responders, tc.clients, res.PerMessage, res.Messages, res.Requests, tc.per)
		}
		var out strings.Builder
		if err := res.WriteText(&out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "nats  echo") {
			t.Errorf("report has no echo row:\n%s", out.String())
		}
	}
}

// TestEchoWithoutResponders fails at once instead of timing out on every
// request: no responder answers on the subjects.
func TestEchoWithoutResponders(t *testing.T) {
	srv := bustest.Embedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Echo(ctx, EchoConfig{URL: srv.URL, Duration: 10 * time.Second, Log: bustest.Logger(t)})
	if err == nil || !strings.Contains(err.Error(), "no responders") {
		t.Fatalf("echo without responders: err %v, want no responders", err)
	}
	if res == nil || res.Messages != 0 {
		t.Fatalf("echo without responders: result %+v", res)
	}
}
