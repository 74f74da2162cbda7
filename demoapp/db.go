package demoapp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// Product is what the demo's database holds for a product id.
type Product struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	UpdatedBy string    `json:"updated_by,omitempty"`
}

// db is the demo's database: a JetStream KV bucket every app server of
// the cluster shares, standing for the SQL database a real app would
// query. A product never written has a default name.
type db struct {
	kv jetstream.KeyValue
}

func openDB(ctx context.Context, conn *bus.Conn, replicas int) (*db, error) {
	name := conn.Subjects.BucketName("CACHEBUS_DEMO_DB")
	kv, err := persistence.EnsureKeyValue(ctx, conn, "demo database "+name, jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "the cachebus demo app's products, standing for an app's database",
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, err
	}
	return &db{kv: kv}, nil
}

// product reads product id.
func (d *db) product(ctx context.Context, id string) (Product, error) {
	e, err := d.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Product{ID: id, Name: "Product " + id}, nil
	}
	if err != nil {
		return Product{}, fmt.Errorf("read product %s: %w", id, err)
	}
	var p Product
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		return Product{}, fmt.Errorf("read product %s: %w", id, err)
	}
	return p, nil
}

// update writes product p.
func (d *db) update(ctx context.Context, p Product) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if _, err := d.kv.Put(ctx, p.ID, data); err != nil {
		return fmt.Errorf("update product %s: %w", p.ID, err)
	}
	return nil
}
