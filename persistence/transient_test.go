package persistence

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestTransient: which JetStream failures a create retries.
func TestTransient(t *testing.T) {
	api := func(code int, ec jetstream.ErrorCode) error {
		return fmt.Errorf("wrapped: %w", &jetstream.APIError{Code: code, ErrorCode: ec})
	}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"no suitable peers while the cluster forms", api(400, errCodeNoSuitablePeers), true},
		{"server error", api(500, 0), true},
		{"unavailable", api(503, 0), true},
		{"replicas without a cluster", api(500, errCodeReplicasNotSupported), false},
		{"invalid config", api(500, errCodeStreamInvalidConfig), false},
		{"other bad request", api(400, 10999), false},
		{"timeout", context.DeadlineExceeded, true},
		{"plain error", errors.New("boom"), false},
	}
	for _, tc := range cases {
		if got := transient(tc.err); got != tc.want {
			t.Errorf("%s: transient = %v, want %v", tc.name, got, tc.want)
		}
	}
}
