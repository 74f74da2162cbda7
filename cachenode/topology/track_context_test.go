package topology_test

import (
	"context"
	"testing"
	"time"

	"github.com/cachebus/cachebus/bus/bustest"
	"github.com/cachebus/cachebus/cachenode/partition"
	"github.com/cachebus/cachebus/cachenode/topology"
	"github.com/cachebus/cachebus/persistence"
)

// TestTrackOutlivesStartContext checks that the context given to Track
// bounds its start only: a baseline change made after it ended still
// reaches the table.
func TestTrackOutlivesStartContext(t *testing.T) {
	tg := bustest.Embedded(t)
	c := bustest.Connect(t, tg.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	nodes, err := persistence.OpenOrBindNodes(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := topology.Track(ctx, c, nodes, time.Second, nil)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Stop)
	if _, err := nodes.SetBaseline(context.Background(), []partition.Member{{ID: "n1"}, {ID: "n2"}}, 1, false); err != nil {
		t.Fatal(err)
	}
	bustest.WaitFor(t, 10*time.Second, "the baseline change tracked", func() bool {
		return tr.Table().Assignment.BaselineVersion == 1 && tr.Baseline().Version == 1
	})
}
