// Command underlay is the host CNI executable of the underlay plugin: a static shim that
// carries one CNI invocation to the node agent and prints the agent's answer.
//
// The container runtime execs /opt/cni/bin/underlay with the CNI_* environment and the
// network configuration on stdin. Every CNI decision (validation, version negotiation,
// prevResult, result conversion, error codes and messages) is made by the agent, in Python
// (cni/invocation.py). This program knows only:
//
//   - VERSION, answered here without the agent;
//   - how to frame one request: the CNI_* environment and stdin go to the agent socket
//     named by the netconf's "socket" (default /run/underlay/agent.sock) as
//     POST /v1/cni {"env": {...}, "stdin": "..."} over HTTP/1.1, and the agent's answer
//     {"exit": N, "stdout": "...", "stderr": "..."} is printed as it is, exit code N;
//   - what to answer when the agent cannot be reached: ADD, CHECK and GC fail with code 11
//     naming the socket, DEL succeeds (the agent reclaims what is left when it is back),
//     STATUS fails with code 50;
//   - what must hold before a request can be framed at all, checked in the order the
//     agent checks it: CNI_* values are UTF-8 and CNI_COMMAND is a CNI command (code 4),
//     stdin is at most 1 MiB of UTF-8 JSON holding an object (6), whose "socket", if
//     given, is an absolute path (7). The messages are the agent's own.
//
// Timeouts: connecting at most 5 s; the reply within the netconf's "timeout" (default
// 30 s). No failure prints a Go trace: every one is a CNI error JSON on stdout.
//
// Standard library only; built with CGO_ENABLED=0 into a static executable (Makefile).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

const (
	defaultSocket  = "/run/underlay/agent.sock"
	maxStdinBytes  = 1 << 20
	maxReplyBytes  = 4 << 20
	defaultTimeout = 30.0
	maxTimeout     = 300.0
	connectTimeout = 5 * time.Second
	endpoint       = "/v1/cni"
)

// The versions of the CNI spec the agent speaks, oldest first (cni.spec.SUPPORTED_VERSIONS;
// a test keeps the two equal).
var supportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

var commands = []string{"ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"}

// CNI error codes (spec 1.1.0) this program answers with itself.
const (
	codeInvalidEnv    = 4
	codeIOFailure     = 5
	codeDecodeFailure = 6
	codeInvalidConfig = 7
	codeTryAgainLater = 11
	codeNotAvailable  = 50
	codeInternal      = 107
)

type cniError struct {
	code int
	msg  string
}

func (e *cniError) Error() string { return e.msg }

// errorJSON is the spec's error object, field order as the agent writes it.
type errorJSON struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

func main() {
	os.Exit(safeRun())
}

// safeRun turns a panic into a CNI error: the runtime must never see a Go trace.
func safeRun() (exit int) {
	defer func() {
		if r := recover(); r != nil {
			exit = fail(newestVersion(), codeInternal,
				fmt.Sprintf("internal error in the underlay executable: %v", r), "")
		}
	}()
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Printf("underlay %s\n", version)
		return 0
	}
	return run()
}

func run() int {
	env := cniEnvironment()
	stdin, readErr := readStdin()
	if readErr != nil {
		return fail(requestVersion(stdin), codeIOFailure,
			"reading the network configuration on stdin failed: "+readErr.Error(), "")
	}
	if err := checkEnv(env); err != nil {
		return fail(requestVersion(stdin), err.code, err.msg, "")
	}
	if len(stdin) > maxStdinBytes {
		return fail(newestVersion(), codeDecodeFailure, fmt.Sprintf("network configuration "+
			"on stdin is larger than %d bytes; refusing to decode it", maxStdinBytes), "")
	}
	command := env["CNI_COMMAND"]
	if command == "VERSION" {
		return answerVersion(stdin)
	}
	conf, err := frameConf(stdin)
	if err != nil {
		return fail(conf.version, err.code, err.msg, "")
	}
	return forward(command, conf, env, stdin)
}

// cniEnvironment holds the CNI_* variables only: nothing else of the runtime's
// environment goes to the agent.
func cniEnvironment() map[string]string {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CNI_") {
			continue
		}
		if i := strings.IndexByte(kv, '='); i > 0 {
			env[kv[:i]] = kv[i+1:]
		}
	}
	return env
}

func readStdin() ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(os.Stdin, maxStdinBytes+1))
	if err != nil && (errors.Is(err, syscall.EBADF) || errors.Is(err, os.ErrClosed)) {
		return nil, nil // no stdin at all reads as empty
	}
	return data, err
}

// checkEnv: CNI_* values must be UTF-8 (they travel as JSON strings), and CNI_COMMAND
// must be one of the six, since what to answer without the agent depends on it.
func checkEnv(env map[string]string) *cniError {
	for _, name := range sortedKeys(env) {
		if at := invalidUTF8At([]byte(env[name])); at >= 0 {
			return &cniError{codeInvalidEnv, fmt.Sprintf("%s is not valid UTF-8 (byte %d of its "+
				"value)", name, utf8.RuneCount([]byte(env[name])[:at]))}
		}
	}
	command, set := env["CNI_COMMAND"]
	expected := "expected one of " + strings.Join(commands, ", ")
	if !set || command == "" {
		return &cniError{codeInvalidEnv, "CNI_COMMAND is not set; " + expected}
	}
	for _, known := range commands {
		if command == known {
			return nil
		}
	}
	return &cniError{codeInvalidEnv, fmt.Sprintf("CNI_COMMAND %s is not a CNI command; %s",
		pyRepr(command), expected)}
}

// answerVersion: the spec's VERSION, in the version asked (the newest when none is).
func answerVersion(stdin []byte) int {
	asked := newestVersion()
	if len(bytes.TrimSpace(stdin)) > 0 {
		conf, err := decodeObject(stdin)
		if err != nil {
			return fail(asked, err.code, err.msg, "")
		}
		if raw, ok := conf["cniVersion"]; ok && string(raw) != "null" {
			var text string
			if json.Unmarshal(raw, &text) != nil || !isVersion(text) {
				return fail(asked, codeInvalidConfig, fmt.Sprintf("cniVersion %s is not a "+
					"version of the form X.Y.Z", reprJSON(raw)), "")
			}
			asked = text
		}
	}
	return printJSON(os.Stdout, map[string]interface{}{
		"cniVersion": asked, "supportedVersions": supportedVersions}, 0)
}

// netconf is what framing needs of the network configuration.
type netconf struct {
	socket  string
	timeout time.Duration
	version string // for errors answered here
}

func frameConf(stdin []byte) (netconf, *cniError) {
	out := netconf{socket: defaultSocket, timeout: seconds(defaultTimeout),
		version: newestVersion()}
	if len(bytes.TrimSpace(stdin)) == 0 {
		return out, &cniError{codeDecodeFailure, "no network configuration on stdin"}
	}
	conf, err := decodeObject(stdin)
	if err != nil {
		return out, err
	}
	out.version = versionOf(conf)
	if raw, ok := conf["socket"]; ok {
		var path string
		if json.Unmarshal(raw, &path) != nil || raw[0] != '"' {
			return out, &cniError{codeInvalidConfig, fmt.Sprintf("socket must be a string, got %s"+
				" (%.40s)", withArticle(jsonType(raw)), reprJSON(raw))}
		}
		if !strings.HasPrefix(path, "/") {
			return out, &cniError{codeInvalidConfig, fmt.Sprintf("socket %s must be an "+
				"absolute path", pyRepr(path))}
		}
		out.socket = path
	}
	if raw, ok := conf["timeout"]; ok {
		if t, err := strconv.ParseFloat(string(raw), 64); err == nil && t > 0 && t <= maxTimeout {
			out.timeout = seconds(t)
		} // a bad timeout is the agent's to refuse, by name
	}
	return out, nil
}

// decodeObject parses stdin as one JSON object, naming what is wrong otherwise.
func decodeObject(stdin []byte) (map[string]json.RawMessage, *cniError) {
	if at := invalidUTF8At(stdin); at >= 0 {
		return nil, &cniError{codeDecodeFailure, fmt.Sprintf("network configuration on stdin "+
			"is not UTF-8: %s at byte %d", utf8Reason(stdin[at:]), at)}
	}
	var conf map[string]json.RawMessage
	err := json.Unmarshal(stdin, &conf)
	var syntax *json.SyntaxError
	switch {
	case errors.As(err, &syntax):
		return nil, &cniError{codeDecodeFailure, fmt.Sprintf("network configuration on stdin "+
			"is not valid JSON: %s (at byte %d)", syntax.Error(), syntax.Offset)}
	case err != nil || conf == nil:
		return nil, &cniError{codeDecodeFailure, "network configuration on stdin must be a " +
			"JSON object, got " + withArticle(jsonType(bytes.TrimSpace(stdin)))}
	}
	return conf, nil
}

// requestVersion is the version to write an error in: the request's cniVersion when it is
// an X.Y.Z string, even one the agent does not speak (spec: the error's cniVersion is "the
// same value as provided by the configuration"), else the newest.
func requestVersion(stdin []byte) string {
	var conf map[string]json.RawMessage // exact keys: a struct would fold case
	if json.Unmarshal(stdin, &conf) != nil {
		return newestVersion()
	}
	return versionOf(conf)
}

func versionOf(conf map[string]json.RawMessage) string {
	var text string
	if json.Unmarshal(conf["cniVersion"], &text) == nil && isVersion(text) {
		return text
	}
	return newestVersion()
}

func newestVersion() string { return supportedVersions[len(supportedVersions)-1] }

// ---- the agent ------------------------------------------------------------------------

// unreachable: nothing listens, the request never reached the agent.
type unreachable struct{ msg string }

func (e *unreachable) Error() string { return e.msg }

// answer is the agent's reply to POST /v1/cni.
type answer struct {
	Exit   *int    `json:"exit"`
	Stdout *string `json:"stdout"`
	Stderr string  `json:"stderr"`
}

func forward(command string, conf netconf, env map[string]string, stdin []byte) int {
	status, body, err := callAgent(conf, env, stdin)
	if err != nil {
		var down *unreachable
		switch {
		case errors.As(err, &down) && command == "DEL":
			// Spec: DEL must succeed when what it would remove cannot be reached; the agent
			// releases the allocation when it is back (GC and reconcile).
			fmt.Fprintf(os.Stderr, "underlay: DEL of %s/%s reported as done: agent unreachable: "+
				"%s; the agent will reclaim it when it is back\n", env["CNI_CONTAINERID"],
				env["CNI_IFNAME"], down.msg)
			return 0
		case errors.As(err, &down):
			return fail(conf.version, downCode(command), "agent unreachable: "+down.msg, "")
		default: // it may have arrived: DEL must not pretend success, the agent may be mid-way
			return fail(conf.version, downCode(command), err.Error(), "")
		}
	}
	if status == 200 {
		var reply answer
		if json.Unmarshal(body, &reply) == nil && reply.Exit != nil && reply.Stdout != nil {
			os.Stdout.WriteString(*reply.Stdout)
			if reply.Stderr != "" {
				os.Stderr.WriteString(reply.Stderr)
			}
			return *reply.Exit
		}
		return fail(conf.version, downCode(command), fmt.Sprintf("agent at %s sent HTTP 200 "+
			"that is not an answer to %s (%.80q)", conf.socket, endpoint, body), "")
	}
	// The agent refused the request itself (too large, an agent without /v1/cni, ...).
	var refusal struct {
		Code    json.RawMessage `json:"code"`
		Msg     string          `json:"msg"`
		Details string          `json:"details"`
	}
	_ = json.Unmarshal(body, &refusal)
	code, err := strconv.Atoi(string(refusal.Code))
	if err != nil {
		code = codeInternal
	}
	if refusal.Msg == "" {
		refusal.Msg = fmt.Sprintf("agent answered HTTP %d without a message", status)
	}
	return fail(conf.version, code, refusal.Msg, refusal.Details)
}

func downCode(command string) int {
	if command == "STATUS" {
		return codeNotAvailable
	}
	return codeTryAgainLater
}

func callAgent(conf netconf, env map[string]string, stdin []byte) (int, []byte, error) {
	deadline := time.Now().Add(conf.timeout)
	dial := connectTimeout
	if conf.timeout < dial {
		dial = conf.timeout
	}
	conn, err := net.DialTimeout("unix", conf.socket, dial)
	if err != nil {
		return 0, nil, &unreachable{describeDial(conf.socket, err)}
	}
	defer conn.Close()
	body, err := json.Marshal(map[string]interface{}{"env": env, "stdin": string(stdin)})
	if err != nil {
		return 0, nil, err
	}
	request := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: underlay-agent\r\nContent-Type: "+
		"application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", endpoint,
		len(body))
	_ = conn.SetDeadline(deadline)
	raw, err := exchange(conn, append([]byte(request), body...))
	var timeout net.Error
	switch {
	case errors.As(err, &timeout) && timeout.Timeout():
		return 0, nil, fmt.Errorf("agent at %s did not answer POST %s within %s s",
			conf.socket, endpoint, strconv.FormatFloat(conf.timeout.Seconds(), 'g', -1, 64))
	case err != nil:
		return 0, nil, fmt.Errorf("connection to agent at %s failed during POST %s: %s",
			conf.socket, endpoint, describeOSError(err))
	}
	return parseReply(raw, conf.socket)
}

func describeDial(socket string, err error) string {
	var timeout net.Error
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Sprintf("agent socket %s does not exist (is the underlay agent running?)",
			socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("agent at %s refused the connection (is the underlay agent "+
			"running?)", socket)
	case errors.As(err, &timeout) && timeout.Timeout():
		return fmt.Sprintf("connecting to agent at %s timed out", socket)
	}
	return fmt.Sprintf("cannot connect to agent at %s: %s", socket, describeOSError(err))
}

func describeOSError(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

// exchange writes the request and reads the reply: until the agent closes the connection
// or the Content-Length body is in, at most maxReplyBytes.
func exchange(conn net.Conn, request []byte) ([]byte, error) {
	if _, err := conn.Write(request); err != nil {
		return nil, err
	}
	var reply []byte
	chunk := make([]byte, 64<<10)
	for {
		n, err := conn.Read(chunk)
		reply = append(reply, chunk[:n]...)
		if len(reply) > maxReplyBytes {
			return nil, fmt.Errorf("the reply exceeds %d bytes", maxReplyBytes)
		}
		if complete(reply) {
			return reply, nil
		}
		if errors.Is(err, io.EOF) {
			return reply, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func complete(reply []byte) bool {
	end := bytes.Index(reply, []byte("\r\n\r\n"))
	if end < 0 {
		return false
	}
	length, ok := contentLength(reply[:end])
	return ok && len(reply)-end-4 >= length
}

func contentLength(head []byte) (int, bool) {
	for _, line := range strings.Split(string(head), "\r\n")[1:] {
		name, value, found := strings.Cut(line, ":")
		if found && strings.EqualFold(strings.TrimSpace(name), "content-length") {
			n, err := strconv.Atoi(strings.TrimSpace(value))
			return n, err == nil && n >= 0
		}
	}
	return 0, false
}

func parseReply(raw []byte, socket string) (int, []byte, error) {
	head, body, found := bytes.Cut(raw, []byte("\r\n\r\n"))
	first, _, _ := bytes.Cut(head, []byte("\r\n"))
	parts := strings.Fields(string(first))
	if !found || len(parts) < 2 || !strings.HasPrefix(parts[0], "HTTP/1.") {
		return 0, nil, fmt.Errorf("agent at %s sent a reply that is not HTTP/1.x (%.60q)",
			socket, first)
	}
	status, err := strconv.Atoi(parts[1])
	if err != nil {
		return 0, nil, fmt.Errorf("agent at %s sent a reply that is not HTTP/1.x (%.60q)",
			socket, first)
	}
	if length, ok := contentLength(head); ok && length < len(body) {
		body = body[:length]
	}
	return status, body, nil
}

// ---- output ---------------------------------------------------------------------------

func fail(cniVersion string, code int, msg, details string) int {
	printJSON(os.Stdout, errorJSON{cniVersion, code, msg, details}, 1)
	return 1
}

func printJSON(w io.Writer, value interface{}, exit int) int {
	data, err := json.Marshal(value)
	if err != nil { // cannot happen for the values above; still no trace
		data = []byte(`{"code":107,"msg":"internal error in the underlay executable"}`)
		exit = 1
	}
	w.Write(append(data, '\n'))
	return exit
}

// ---- small helpers ----------------------------------------------------------------------

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ { // a handful of keys: insertion sort, no sort package
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

// isVersion: digits.digits.digits, as the agent's VERSION accepts.
func isVersion(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// invalidUTF8At is the offset of the first byte that is not valid UTF-8, or -1.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return -1
}

// utf8Reason names what is wrong at the start of b, in the words Python's decoder uses.
func utf8Reason(b []byte) string {
	c := b[0]
	if c < 0xC2 || c > 0xF4 {
		return "invalid start byte"
	}
	if !utf8.FullRune(b) {
		return "unexpected end of data"
	}
	return "invalid continuation byte"
}

// jsonType names a JSON value's type as the agent's messages do.
func jsonType(raw []byte) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "list"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	if bytes.ContainsAny(raw, ".eE") {
		return "number"
	}
	return "integer"
}

func withArticle(noun string) string {
	if strings.ContainsRune("aeiou", rune(noun[0])) {
		return "an " + noun
	}
	return "a " + noun
}

// reprJSON shows a JSON value the way the agent's messages show a Python value.
func reprJSON(raw []byte) string {
	var text string
	if raw[0] == '"' && json.Unmarshal(raw, &text) == nil {
		return pyRepr(text)
	}
	switch string(raw) {
	case "true":
		return "True"
	case "false":
		return "False"
	case "null":
		return "None"
	}
	return string(raw)
}

// pyRepr quotes a string as Python's repr() does (single quotes unless it holds one).
func pyRepr(s string) string {
	quote := byte('\'')
	if strings.ContainsRune(s, '\'') && !strings.ContainsRune(s, '"') {
		quote = '"'
	}
	var b strings.Builder
	b.WriteByte(quote)
	for _, r := range s {
		switch {
		case r == rune(quote) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(quote)
	return b.String()
}
