package server_test

import (
	"strings"
	"testing"

	"github.com/cachebus/cachebus/cachenode/server"
)

func TestMigrateRateDecode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want server.MigrateRate
		err  string
	}{
		{in: "0", want: server.MigrateRate{}},
		{in: "50000", want: server.MigrateRate{Records: 50000}},
		{in: "50000,16MiB", want: server.MigrateRate{Records: 50000, Bytes: 16 << 20}},
		{in: " 100000/s , 64MB/s ", want: server.MigrateRate{Records: 100000, Bytes: 64e6}},
		{in: "0,1GiB", want: server.MigrateRate{Bytes: 1 << 30}},
		{in: "10,2048", want: server.MigrateRate{Records: 10, Bytes: 2048}},
		{in: "10,7KB", want: server.MigrateRate{Records: 10, Bytes: 7000}},
		{in: "", err: "records per second"},
		{in: "-1", err: "records per second"},
		{in: "fast", err: "records per second"},
		{in: "10,", err: "bytes per second"},
		{in: "10,-5MiB", err: "bytes per second"},
		{in: "10,5TiB", err: "bytes per second"},
		{in: "10,99999999999GiB", err: "bytes per second"},
	} {
		var got server.MigrateRate
		err := got.Decode(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Decode(%q) = %+v, %v; want an error about %s", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("Decode(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}
