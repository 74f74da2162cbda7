package lbgateway

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestUpgrade: a WebSocket-style protocol switch is tunnelled both ways
// once the backend agrees; a backend that declines answers as usual.
func TestUpgrade(t *testing.T) {
	b := newBackend(t, "b1")
	b.setHandler(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" || r.URL.Path != "/ws" {
			http.Error(w, "no upgrade here", http.StatusBadRequest)
			return
		}
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, strings.ToUpper(line))
		}
	})
	g := startGateway(t, nil, testConfig(b))

	dial := func(t *testing.T, path string) (net.Conn, *bufio.Reader, *http.Response) {
		c, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c, br, resp
	}

	t.Run("switched and tunnelled", func(t *testing.T) {
		c, br, resp := dial(t, "/ws")
		if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo" {
			t.Fatalf("status %d, Upgrade %q", resp.StatusCode, resp.Header.Get("Upgrade"))
		}
		for _, msg := range []string{"hello\n", "second line\n"} {
			io.WriteString(c, msg)
			got, err := br.ReadString('\n')
			if err != nil || got != strings.ToUpper(msg) {
				t.Fatalf("echo of %q: %q, %v", msg, got, err)
			}
		}
	})
	t.Run("declined: an ordinary answer", func(t *testing.T) {
		_, _, resp := dial(t, "/not-ws")
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "no upgrade here") {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
	})
}
