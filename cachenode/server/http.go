package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cachebus/cachebus/bus"
	"github.com/cachebus/cachebus/cachenode/wire"
)

// HTTP headers of the records API.
const (
	// HeaderVersion carries a record's version: the higher is the later
	// write.
	HeaderVersion = "Cachebus-Version"
	// HeaderExpires is when a record expires, RFC 3339.
	HeaderExpires = "Cachebus-Expires"
	// HeaderStale is "1" on a record past its TTL, served because
	// fallback is on.
	HeaderStale = "Cachebus-Stale"
	// HeaderTTL is a put's TTL as a Go duration ("30s"), when the query
	// has no ttl parameter.
	HeaderTTL = "Cachebus-TTL"
)

// RecordsPattern is the path the records API serves, for a ServeMux.
const RecordsPattern = "/v1/records/"

// RecordsHandler serves records over HTTP, for any language:
//
//	GET    /v1/records/{ns}/{key}            200 with the value as body; 404
//	PUT    /v1/records/{ns}/{key}?ttl=30s    the body is the value; 204
//	DELETE /v1/records/{ns}/{key}            204
//
// A key may hold slashes; escape what a URL path cannot carry. Answers
// carry the record's version and expiry in Cachebus-Version and
// Cachebus-Expires (RFC 3339), and Cachebus-Stale: 1 when fallback serves
// an expired record. A put's TTL is ?ttl= or the Cachebus-TTL header, a Go
// duration; without either the node's default applies. Every request goes
// through Do, so any node answers for any key. Errors are JSON
// {"error":"…","code":"…"} with the wire codes: bad_request 400,
// too_large 413, no_owner and unavailable 503, internal 500.
//
// The handler does no access control: mount it behind the admin API's
// (admin.Server.Handle), which lets reads through like GET /v1/status and
// wants the admin token for writes.
func (s *Server) RecordsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(RecordsPattern+"{ns}/{key...}", s.serveRecord)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeHTTPError(w, http.StatusNotFound, "not_found", "no route "+r.URL.Path+"; records are at "+RecordsPattern+"{ns}/{key}")
	})
	return mux
}

func (s *Server) serveRecord(w http.ResponseWriter, r *http.Request) {
	req := wire.Request{NS: r.PathValue("ns"), Key: r.PathValue("key")}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		req.Op = wire.OpGet
	case http.MethodPut:
		req.Op = wire.OpPut
	case http.MethodDelete:
		req.Op = wire.OpDelete
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT, DELETE")
		writeHTTPError(w, http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("method %s not allowed on %s; use GET, PUT or DELETE", r.Method, r.URL.Path))
		return
	}
	if err := bus.CheckNamespace(req.NS); err != nil {
		writeWireError(w, wire.Errorf(wire.CodeBadRequest, "namespace %q must match [A-Za-z0-9_-]{1,64}", req.NS))
		return
	}
	if err := wire.CheckKey(req.Key, s.lim); err != nil {
		writeWireError(w, err)
		return
	}
	if req.Op == wire.OpPut {
		var err error
		if req.TTL, err = putTTL(r); err != nil {
			writeWireError(w, err)
			return
		}
		if req.Value, err = s.readValue(w, r); err != nil {
			writeWireError(w, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout+time.Second)
	defer cancel()
	rep := s.Do(ctx, &req)
	switch {
	case rep.Status == wire.StatusError:
		writeWireError(w, rep.Err)
	case rep.Status == wire.StatusNotFound:
		writeHTTPError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no record %s/%s", req.NS, req.Key))
	case req.Op == wire.OpGet:
		setItemHeaders(w.Header(), &rep.Item)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(rep.Item.Value)))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(rep.Item.Value)
		}
	default:
		// A put answers 204 whether it created the record or replaced it:
		// the node's reply does not say which.
		setItemHeaders(w.Header(), &rep.Item)
		w.WriteHeader(http.StatusNoContent)
	}
}

// putTTL reads a put's TTL from ?ttl= or the Cachebus-TTL header.
func putTTL(r *http.Request) (time.Duration, error) {
	src, v := "ttl", r.URL.Query().Get("ttl")
	if v == "" {
		src, v = HeaderTTL, r.Header.Get(HeaderTTL)
	}
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, wire.Errorf(wire.CodeBadRequest, "%s: want a duration such as 30s or 10m, got %q", src, v)
	}
	return d, nil
}

// readValue reads a put's body, refusing one over the value limit.
func (s *Server) readValue(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := s.lim.MaxValue
	tooLarge := wire.Errorf(wire.CodeTooLarge, "value exceeds the limit of %d bytes (CACHEBUS_RECORD_MAX_VALUE)", limit)
	if r.ContentLength > int64(limit) {
		return nil, tooLarge
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(limit)+1))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe), err == nil && len(data) > limit:
		return nil, tooLarge
	case err != nil:
		return nil, wire.Errorf(wire.CodeBadRequest, "reading the value: %v", err)
	}
	if data == nil {
		data = []byte{}
	}
	return data, nil
}

func setItemHeaders(h http.Header, it *wire.Item) {
	h.Set(HeaderVersion, strconv.FormatUint(it.Version, 10))
	if it.Expires != 0 {
		h.Set(HeaderExpires, time.UnixMilli(it.Expires).UTC().Format(time.RFC3339))
	}
	if it.Stale {
		h.Set(HeaderStale, "1")
	}
	h.Set("Cache-Control", "no-store")
}

// HTTPStatus is the HTTP status of a reply error code.
func HTTPStatus(code wire.Code) int {
	switch code {
	case wire.CodeBadRequest:
		return http.StatusBadRequest
	case wire.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case wire.CodeNoOwner, wire.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeWireError(w http.ResponseWriter, err error) {
	var we *wire.Error
	if !errors.As(err, &we) {
		we = &wire.Error{Code: wire.CodeInternal, Message: err.Error()}
	}
	status := HTTPStatus(we.Code)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeHTTPError(w, status, string(we.Code), strings.TrimSpace(we.Message))
}

// writeHTTPError answers as the admin API does, JSON with the reply's code
// beside the message.
func writeHTTPError(w http.ResponseWriter, status int, code, msg string) {
	data, _ := json.MarshalIndent(map[string]string{"error": msg, "code": code}, "", "  ")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
}
