package bus

import (
	"context"
	"log/slog"
)

// AtLeast returns a logger that passes on l's records at or above level
// only. The bus logs every event it sends and applies at info, as
// operators of clustered caches expect; a command or a benchmark that
// reports those itself keeps only the warnings.
func AtLeast(l *slog.Logger, level slog.Level) *slog.Logger {
	return slog.New(minLevel{Handler: l.Handler(), min: level})
}

type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{Handler: h.Handler.WithAttrs(attrs), min: h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{Handler: h.Handler.WithGroup(name), min: h.min}
}
