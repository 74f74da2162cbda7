package persistence

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Errors of sealed records. Replay counts a record that fails with one of
// them and goes on; Rekey reports them.
var (
	// ErrRecordKeyUnknown is a record sealed under a key id that neither
	// CACHEBUS_RECORD_KEY nor CACHEBUS_RECORD_KEY_PREVIOUS has, or sealed
	// while this process has no key at all.
	ErrRecordKeyUnknown = errors.New("persistence: record sealed with an unknown key")
	// ErrRecordSeal is a sealed record that does not open under the key its
	// id names: corrupt, truncated, or moved to another namespace or key.
	ErrRecordSeal = errors.New("persistence: sealed record does not open")
)

// RecordKeyLen is the length of a record key: AES-256.
const RecordKeyLen = 32

// sealNonceLen is GCM's standard nonce length. A random nonce per write
// is safe for about 2^32 writes under one key; rotate before that
// (CACHEBUS_RECORD_KEY_PREVIOUS and Rekey make it routine).
const sealNonceLen = 12

// sealAADPrefix starts the additional data every seal is bound to, so a
// sealed value opens only as the value of its own namespace and key.
const sealAADPrefix = "cachebus-record-v1"

// sealKey is one AES-256-GCM key and the id stored beside what it seals.
type sealKey struct {
	id   string
	aead cipher.AEAD
}

// sealer seals with the current key and opens with the current or the
// previous one. A nil current key stores values in clear.
type sealer struct {
	cur, prev *sealKey
}

// RecordKeyID is the id of a record key as stored beside the values it
// seals: the first 8 bytes of its SHA-256, in hex. It names a key in logs
// and errors without revealing it.
func RecordKeyID(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:8])
}

// ParseRecordKey decodes a record key given as base64 (standard or URL
// alphabet, padded or not) and checks that it is 32 bytes long.
func ParseRecordKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	var key []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("not base64: %w", err)
	}
	if len(key) != RecordKeyLen {
		return nil, fmt.Errorf("want %d bytes, got %d (generate one with: head -c 32 /dev/urandom | base64)", RecordKeyLen, len(key))
	}
	return key, nil
}

func newSealKey(key []byte) (*sealKey, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealKey{id: RecordKeyID(key), aead: aead}, nil
}

// newSealer builds the sealer of CACHEBUS_RECORD_KEY (cur) and
// CACHEBUS_RECORD_KEY_PREVIOUS (prev), both base64 and both optional; a
// previous key alone only opens records.
func newSealer(cur, prev string) (*sealer, error) {
	s := &sealer{}
	for _, k := range []struct {
		name, val string
		dst       **sealKey
	}{{"CACHEBUS_RECORD_KEY", cur, &s.cur}, {"CACHEBUS_RECORD_KEY_PREVIOUS", prev, &s.prev}} {
		if strings.TrimSpace(k.val) == "" {
			continue
		}
		raw, err := ParseRecordKey(k.val)
		if err != nil {
			return nil, fmt.Errorf("persistence: %s: %w", k.name, err)
		}
		if *k.dst, err = newSealKey(raw); err != nil {
			return nil, fmt.Errorf("persistence: %s: %w", k.name, err)
		}
	}
	if s.cur != nil && s.prev != nil && s.cur.id == s.prev.id {
		s.prev = nil // the same key twice: rotation is over
	}
	return s, nil
}

// aad is the additional data of a seal: the format, the namespace and the
// key, separated by NUL bytes, which neither may contain.
func aad(buf []byte, ns, key string) []byte {
	buf = append(buf, sealAADPrefix...)
	buf = append(buf, 0)
	buf = append(buf, ns...)
	buf = append(buf, 0)
	return append(buf, key...)
}

// seal appends to dst the nonce and the sealed value under the current
// key and returns it with the key's id; without a key it appends value as
// it is and returns an empty id.
func (s *sealer) seal(dst []byte, ns, key string, value []byte) ([]byte, string, error) {
	if s.cur == nil {
		return append(dst, value...), "", nil
	}
	start := len(dst)
	dst = append(dst, make([]byte, sealNonceLen)...)
	nonce := dst[start:]
	if _, err := rand.Read(nonce); err != nil {
		return nil, "", fmt.Errorf("persistence: seal: %w", err)
	}
	var ad [128]byte
	return s.cur.aead.Seal(dst, nonce, value, aad(ad[:0], ns, key)), s.cur.id, nil
}

// keyFor returns the key whose id is kid.
func (s *sealer) keyFor(kid string) (*sealKey, error) {
	switch {
	case s.cur != nil && s.cur.id == kid:
		return s.cur, nil
	case s.prev != nil && s.prev.id == kid:
		return s.prev, nil
	}
	var have []string
	if s.cur != nil {
		have = append(have, "CACHEBUS_RECORD_KEY has "+s.cur.id)
	}
	if s.prev != nil {
		have = append(have, "CACHEBUS_RECORD_KEY_PREVIOUS has "+s.prev.id)
	}
	if len(have) == 0 {
		return nil, fmt.Errorf("%w: key id %s, and no CACHEBUS_RECORD_KEY is set", ErrRecordKeyUnknown, kid)
	}
	return nil, fmt.Errorf("%w: key id %s (%s)", ErrRecordKeyUnknown, kid, strings.Join(have, ", "))
}

// open returns the value sealed in data under key id kid. It opens in
// place: data is overwritten.
func (s *sealer) open(kid, ns, key string, data []byte) ([]byte, error) {
	k, err := s.keyFor(kid)
	if err != nil {
		return nil, err
	}
	if len(data) < sealNonceLen+k.aead.Overhead() {
		return nil, fmt.Errorf("%w: key id %s: %d bytes is shorter than a nonce and a tag", ErrRecordSeal, kid, len(data))
	}
	var ad [128]byte
	nonce, sealed := data[:sealNonceLen], data[sealNonceLen:]
	v, err := k.aead.Open(sealed[:0], nonce, sealed, aad(ad[:0], ns, key))
	if err != nil {
		return nil, fmt.Errorf("%w: key id %s: authentication failed (corrupt, or not this record's value)", ErrRecordSeal, kid)
	}
	return v, nil
}
