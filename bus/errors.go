package bus

import (
	"errors"
	"fmt"
)

// ValidationError says which field of a message was rejected and why.
type ValidationError struct {
	Field  string
	Reason string
}

func (e *ValidationError) Error() string {
	return "bus: invalid " + e.Field + ": " + e.Reason
}

func fieldErr(field, format string, args ...any) *ValidationError {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Sentinel errors of the bus package, compared with errors.Is.
var (
	// ErrClosed is returned by a publisher or subscriber used after Close.
	ErrClosed = errors.New("bus: closed")
	// ErrNotAcked is returned when a publish was not acknowledged by the
	// event log before its context ended.
	ErrNotAcked = errors.New("bus: publish not acknowledged by the event log")
)

// Reason returns the short machine-readable reason of a decode error for
// metric labels: the field name of a *ValidationError, "json" otherwise.
func Reason(err error) string {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.Field
	}
	return "json"
}
