<?php

declare(strict_types=1);

namespace Tickwire\WebSocket;

use Tickwire\Exception\ConnectionException;
use Tickwire\Exception\HandshakeException;
use Tickwire\Exception\ProtocolException;
use Tickwire\LoopInterface;

/**
 * One RFC 6455 client connection on a {@see LoopInterface}: non-blocking connect, TLS for
 * `wss://` (peer verification on unless the `tls` context options turn it off), the opening
 * handshake with `Sec-WebSocket-Accept` checked, masking, fragment reassembly with UTF-8 checks,
 * automatic pong, and the close handshake with its codes checked.
 *
 * Callbacks (set with the `on*` methods): `onOpen()`, `onMessage(string $payload, bool $binary)`,
 * `onClose(int $code, string $reason)` exactly once per connect (1006 when the connection broke
 * without a close frame, also when connecting failed), `onError(\Throwable $e)` before
 * `onClose` when a failure caused the end.
 *
 * A close code the client sends itself (1002, 1007, 1009 for what the server sent) is the code
 * `onClose` reports. After a close frame each way the client waits up to `close_timeout` for the
 * server to end TCP (RFC 6455 §7.1.1: the server closes first), then closes it itself.
 */
final class Connection
{
    private const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
    private const CONNECTING = 0;
    private const OPEN = 1;
    private const CLOSING = 2;
    private const CLOSED = 3;

    /** @var resource|null */
    private $socket = null;
    private int $state = self::CLOSED;
    private string $key = '';
    private bool $tls;
    private string $head = '';
    private string $out = '';
    private bool $writing = false;
    private FrameCodec $codec;
    /** @var list<string> */
    private array $parts = [];
    private int $partsBytes = 0;
    private ?int $messageOpcode = null;
    /** An incomplete last character of the text fragments so far, checked with the next one. */
    private string $utf8Tail = '';
    private bool $closeSent = false;
    private bool $closeReceived = false;
    private int $closeCode = 1006;
    private string $closeReason = '';
    private ?int $deadline = null;
    private float $lastReceived = 0.0;
    /** permessage-deflate as negotiated: null when not in use, else whether the server keeps its context. */
    private ?bool $serverTakeover = null;
    /** @var \InflateContext|null the inflater, kept across messages while the server keeps its context */
    private $inflater = null;
    private bool $compressed = false;

    /** @var callable|null */
    private $onOpen = null;
    /** @var callable|null */
    private $onMessage = null;
    /** @var callable|null */
    private $onClose = null;
    /** @var callable|null */
    private $onError = null;

    private string $host;
    private int $port;
    private string $target;
    private array $options;

    /**
     * Options: `headers` (extra request headers, name => value), `timeout` (seconds for TCP, TLS
     * and the handshake, default 10), `tls` (ssl stream context options, merged over
     * `verify_peer`/`verify_peer_name` true), `max_message_bytes` (default 16 MiB),
     * `close_timeout` (default 2 s).
     */
    public function __construct(private LoopInterface $loop, string $url, array $options = [])
    {
        $parts = parse_url($url);
        $scheme = strtolower($parts['scheme'] ?? '');
        if (!in_array($scheme, ['ws', 'wss'], true) || !isset($parts['host'])) {
            throw new \InvalidArgumentException("not a ws:// or wss:// URL: $url");
        }
        $this->tls = $scheme === 'wss';
        $this->host = $parts['host'];
        $this->port = $parts['port'] ?? ($this->tls ? 443 : 80);
        $this->target = ($parts['path'] ?? '/') . (isset($parts['query']) ? '?' . $parts['query'] : '');
        $this->options = $options + [
            'headers' => [],
            'timeout' => 10.0,
            'tls' => [],
            'max_message_bytes' => 16 << 20,
            'close_timeout' => 2.0,
            'deflate' => true,
        ];
        $this->options['deflate'] = $this->options['deflate'] && function_exists('inflate_init');
        $this->codec = new FrameCodec($this->options['max_message_bytes']);
    }

    public function onOpen(callable $f): self { $this->onOpen = $f; return $this; }
    public function onMessage(callable $f): self { $this->onMessage = $f; return $this; }
    public function onClose(callable $f): self { $this->onClose = $f; return $this; }
    public function onError(callable $f): self { $this->onError = $f; return $this; }

    public function isOpen(): bool
    {
        return $this->state === self::OPEN;
    }

    /** Starts connecting; the outcome arrives as `onOpen` or `onError` + `onClose`. */
    public function connect(): void
    {
        if ($this->state !== self::CLOSED || $this->socket !== null) {
            throw new \LogicException('connect() on a connection already in use');
        }
        $this->state = self::CONNECTING;
        $host = str_contains($this->host, ':') ? '[' . trim($this->host, '[]') . ']' : $this->host;
        $context = stream_context_create(['ssl' => $this->options['tls'] + [
            'verify_peer' => true,
            'verify_peer_name' => true,
            'peer_name' => trim($this->host, '[]'),
            'SNI_enabled' => true,
        ]]);
        $socket = @stream_socket_client(
            "tcp://$host:{$this->port}",
            $errno,
            $errstr,
            0,
            STREAM_CLIENT_CONNECT | STREAM_CLIENT_ASYNC_CONNECT,
            $context,
        );
        if ($socket === false) {
            $this->fail(new ConnectionException("cannot connect to {$this->host}:{$this->port}: $errstr"));
            return;
        }
        $this->socket = $socket;
        stream_set_blocking($socket, false);
        stream_set_read_buffer($socket, 0);
        stream_set_write_buffer($socket, 0);
        $this->deadline = $this->loop->addTimer((float) $this->options['timeout'], function (): void {
            $this->deadline = null;
            $this->fail(new ConnectionException(
                "no WebSocket handshake with {$this->host}:{$this->port} within {$this->options['timeout']} s",
            ));
        });
        $this->loop->addWriteStream($socket, fn () => $this->connected());
    }

    /** Sends a text message (it must be UTF-8). */
    public function send(string $text): void
    {
        $this->sendFrame(Frame::TEXT, $text);
    }

    public function sendBinary(string $data): void
    {
        $this->sendFrame(Frame::BINARY, $data);
    }

    public function ping(string $payload = ''): void
    {
        $this->sendFrame(Frame::PING, $payload);
    }

    /** Starts the close handshake; `onClose` follows when it completes (or times out). */
    public function close(int $code = 1000, string $reason = ''): void
    {
        if ($this->state === self::CONNECTING) {
            $this->closeCode = $code;
            $this->closeReason = $reason;
            $this->finish();
            return;
        }
        if ($this->state !== self::OPEN) {
            return;
        }
        $this->closeCode = $code;
        $this->closeReason = $reason;
        $this->sendClose($code, $reason);
    }

    /** Sends a frame of a message the application built itself (autobahn, tests). */
    public function sendFrame(int $opcode, string $payload, bool $fin = true): void
    {
        if ($this->state !== self::OPEN || $this->closeSent) {
            throw new ConnectionException('the WebSocket connection is not open');
        }
        $this->write(FrameCodec::encode($opcode, $payload, $fin, random_bytes(4)));
    }

    /** When the last bytes arrived (hrtime seconds): pings and pongs count, for idle checks. */
    public function lastReceived(): float
    {
        return $this->lastReceived;
    }

    /** Bytes accepted by send() and not yet handed to the kernel. */
    public function bufferedAmount(): int
    {
        return strlen($this->out);
    }

    private function connected(): void
    {
        $this->loop->removeWriteStream($this->socket);
        if (@stream_socket_get_name($this->socket, true) === false) {
            $this->fail(new ConnectionException("cannot connect to {$this->host}:{$this->port}: connection refused"));
            return;
        }
        if ($this->tls) {
            $this->handshakeTls();
        } else {
            $this->sendUpgrade();
        }
    }

    private function handshakeTls(): void
    {
        $this->loop->removeReadStream($this->socket);
        $this->loop->removeWriteStream($this->socket);
        $error = null;
        set_error_handler(static function (int $no, string $message) use (&$error): bool {
            $error = $message;
            return true;
        });
        try {
            $done = stream_socket_enable_crypto($this->socket, true, STREAM_CRYPTO_METHOD_TLS_CLIENT);
        } finally {
            restore_error_handler();
        }
        if ($done === true) {
            $this->sendUpgrade();
        } elseif ($done === 0) {
            // Non-blocking handshake in progress: it continues when the socket moves.
            $this->loop->addReadStream($this->socket, fn () => $this->handshakeTls());
        } else {
            $this->fail(new ConnectionException("TLS handshake with {$this->host} failed: " . ($error ?? 'unknown error')));
        }
    }

    private function sendUpgrade(): void
    {
        $this->key = base64_encode(random_bytes(16));
        $hostHeader = $this->host . ($this->port === ($this->tls ? 443 : 80) ? '' : ':' . $this->port);
        $request = "GET {$this->target} HTTP/1.1\r\nHost: $hostHeader\r\nUpgrade: websocket\r\n"
            . "Connection: Upgrade\r\nSec-WebSocket-Key: {$this->key}\r\nSec-WebSocket-Version: 13\r\n";
        if ($this->options['deflate']) {
            // The client only inflates: it sends plain frames, which the extension allows.
            $request .= "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
        }
        foreach ($this->options['headers'] as $name => $value) {
            if (preg_match('/[\r\n]/', $name . $value)) {
                $this->fail(new \InvalidArgumentException("header $name contains a line break"));
                return;
            }
            $request .= "$name: $value\r\n";
        }
        $this->write($request . "\r\n");
        $this->loop->addReadStream($this->socket, fn () => $this->readable());
    }

    private function readable(): void
    {
        // Drain everything: with TLS, decrypted bytes wait inside OpenSSL where stream_select
        // cannot see them, so a partial read could leave a message stranded until the next packet.
        $got = false;
        $read = 0;
        while ($this->socket !== null) {
            $chunk = @fread($this->socket, 65536);
            if ($chunk === false || $chunk === '') {
                break;
            }
            $got = true;
            $read += strlen($chunk);
            $this->lastReceived = hrtime(true) / 1e9;
            if ($this->state === self::CONNECTING) {
                $this->head .= $chunk;
                if (!$this->parseHead()) {
                    continue;
                }
            } else {
                $this->codec->feed($chunk);
            }
            if (!$this->drainFrames()) {
                return;
            }
            if ($read >= (4 << 20)) {
                // Let timers and writes run; the rest is read on the next round, which is due
                // at once (it may sit in OpenSSL's buffer, invisible to stream_select).
                $this->loop->addTimer(0, fn () => $this->socket !== null && $this->readable());
                return;
            }
        }
        if ($this->socket !== null && !$got && feof($this->socket)) {
            $this->eof();
        }
    }

    /** Parses the response head once complete; true when the connection is open. */
    private function parseHead(): bool
    {
        $end = strpos($this->head, "\r\n\r\n");
        if ($end === false) {
            if (strlen($this->head) > 16384) {
                $this->fail(new ProtocolException('handshake response head over 16 KiB', 0));
            }
            return false;
        }
        $lines = explode("\r\n", substr($this->head, 0, $end));
        $rest = substr($this->head, $end + 4);
        $this->head = '';
        if (!preg_match('#^HTTP/1\.[01] (\d{3})#', $lines[0], $m)) {
            $this->fail(new ProtocolException("not an HTTP response: {$lines[0]}", 0));
            return false;
        }
        $status = (int) $m[1];
        $headers = [];
        foreach (array_slice($lines, 1) as $line) {
            $colon = strpos($line, ':');
            if ($colon !== false) {
                $headers[strtolower(trim(substr($line, 0, $colon)))] = trim(substr($line, $colon + 1));
            }
        }
        if ($status !== 101) {
            $code = null;
            $message = '';
            $body = json_decode($rest, true);
            if (is_array($body) && isset($body['error']['code'])) {
                $code = (string) $body['error']['code'];
                $message = ': ' . ($body['error']['message'] ?? '');
            }
            $this->fail(new HandshakeException("WebSocket upgrade refused with HTTP $status$message", $status, $code));
            return false;
        }
        $accept = base64_encode(sha1($this->key . self::GUID, true));
        $problem = match (true) {
            strtolower($headers['upgrade'] ?? '') !== 'websocket' => 'no Upgrade: websocket header',
            !in_array('upgrade', array_map('trim', explode(',', strtolower($headers['connection'] ?? ''))), true)
                => 'no Connection: Upgrade header',
            ($headers['sec-websocket-accept'] ?? '') !== $accept => 'wrong Sec-WebSocket-Accept',
            isset($headers['sec-websocket-extensions']) => $this->acceptExtension($headers['sec-websocket-extensions']),
            isset($headers['sec-websocket-protocol']) => 'a subprotocol the client did not offer',
            default => null,
        };
        if ($problem !== null) {
            $this->fail(new ProtocolException("bad handshake response: $problem", 0));
            return false;
        }
        if ($this->deadline !== null) {
            $this->loop->cancel($this->deadline);
            $this->deadline = null;
        }
        $this->state = self::OPEN;
        if ($this->onOpen !== null) {
            ($this->onOpen)();
        }
        if ($this->state === self::OPEN || $this->state === self::CLOSING) {
            $this->codec->feed($rest);
        }
        return true;
    }

    /**
     * Checks the server's `Sec-WebSocket-Extensions` answer against the offer (RFC 7692 §7):
     * null when acceptable (and permessage-deflate is then on), else what is wrong.
     */
    private function acceptExtension(string $header): ?string
    {
        if (!$this->options['deflate']) {
            return 'an extension the client did not offer';
        }
        $params = array_map('trim', explode(';', $header));
        if (strtolower(array_shift($params)) !== 'permessage-deflate' || str_contains($header, ',')) {
            return "an extension the client did not offer: $header";
        }
        $seen = [];
        $takeover = true;
        foreach ($params as $param) {
            [$name, $value] = array_map('trim', explode('=', $param, 2)) + [1 => null];
            $name = strtolower($name);
            if (isset($seen[$name])) {
                return "permessage-deflate parameter $name twice";
            }
            $seen[$name] = true;
            $value = $value === null ? null : trim($value, '"');
            $bits = $value !== null && ctype_digit($value) && (int) $value >= 8 && (int) $value <= 15;
            $ok = match ($name) {
                'server_no_context_takeover', 'client_no_context_takeover' => $value === null,
                'server_max_window_bits', 'client_max_window_bits' => $bits,
                default => false,
            };
            if (!$ok) {
                return "permessage-deflate parameter the client cannot accept: $param";
            }
            $takeover = $takeover && $name !== 'server_no_context_takeover';
        }
        $this->serverTakeover = $takeover;
        $this->codec->allowRsv1(true);
        return null;
    }

    /**
     * Inflates one message (RFC 7692 §7.2.2: the tail `00 00 FF FF` appended), in 4 KiB slices so
     * that a "deflate bomb" is stopped at `max_message_bytes` (1009), not after inflating it all.
     */
    private function inflate(string $data): string
    {
        if ($this->inflater === null || !$this->serverTakeover) {
            $this->inflater = inflate_init(ZLIB_ENCODING_RAW, ['window' => 15]);
        }
        $data .= "\x00\x00\xff\xff";
        $out = '';
        $max = $this->options['max_message_bytes'];
        for ($at = 0, $n = strlen($data); $at < $n; $at += 4096) {
            $chunk = @inflate_add($this->inflater, substr($data, $at, 4096), ZLIB_SYNC_FLUSH);
            if ($chunk === false) {
                throw new ProtocolException('a compressed message that does not inflate');
            }
            $out .= $chunk;
            if (strlen($out) > $max) {
                throw new ProtocolException("message inflates to over $max bytes", 1009);
            }
        }
        return $out;
    }

    /** Handles the complete frames received; false once the connection is gone. */
    private function drainFrames(): bool
    {
        try {
            while ($this->socket !== null && ($frame = $this->codec->next()) !== null) {
                $this->onFrame($frame);
            }
        } catch (ProtocolException $e) {
            $this->protocolError($e);
        }
        return $this->socket !== null;
    }

    private function onFrame(Frame $frame): void
    {
        if ($this->closeReceived) {
            return; // nothing may follow a close frame
        }
        switch ($frame->opcode) {
            case Frame::TEXT:
            case Frame::BINARY:
                if ($this->messageOpcode !== null) {
                    throw new ProtocolException('a new message before the last fragment of the previous one');
                }
                $this->messageOpcode = $frame->opcode;
                $this->compressed = $frame->rsv1;
                $this->fragment($frame);
                return;
            case Frame::CONTINUATION:
                if ($this->messageOpcode === null) {
                    throw new ProtocolException('a continuation frame with no message in progress');
                }
                if ($frame->rsv1) {
                    throw new ProtocolException('RSV1 on a continuation frame');
                }
                $this->fragment($frame);
                return;
            case Frame::PING:
                if (!$this->closeSent) {
                    $this->write(FrameCodec::encode(Frame::PONG, $frame->payload, true, random_bytes(4)));
                }
                return;
            case Frame::PONG:
                return;
            case Frame::CLOSE:
                $this->onCloseFrame($frame->payload);
                return;
        }
    }

    private function fragment(Frame $frame): void
    {
        $this->partsBytes += strlen($frame->payload);
        if ($this->partsBytes > $this->options['max_message_bytes']) {
            throw new ProtocolException("message over {$this->options['max_message_bytes']} bytes", 1009);
        }
        $this->parts[] = $frame->payload;
        if (!$frame->fin) {
            // Fail at the first fragment that cannot become valid UTF-8, not at the end (for a
            // compressed message the text is only known once inflated).
            if ($this->messageOpcode === Frame::TEXT && !$this->compressed && !self::utf8Prefix($this->utf8Tail . $frame->payload, $this->utf8Tail)) {
                throw new ProtocolException('text message is not valid UTF-8', 1007);
            }
            return;
        }
        $this->utf8Tail = '';
        $payload = count($this->parts) === 1 ? $this->parts[0] : implode('', $this->parts);
        if ($this->compressed) {
            $payload = $this->inflate($payload);
        }
        $binary = $this->messageOpcode === Frame::BINARY;
        $this->parts = [];
        $this->partsBytes = 0;
        $this->messageOpcode = null;
        if (!$binary && !self::validUtf8($payload)) {
            throw new ProtocolException('text message is not valid UTF-8', 1007);
        }
        if ($this->onMessage !== null && !$this->closeSent) {
            ($this->onMessage)($payload, $binary);
        }
    }

    private function onCloseFrame(string $payload): void
    {
        $this->closeReceived = true;
        $len = strlen($payload);
        if ($len === 1) {
            $this->closeReceived = false;
            throw new ProtocolException('close frame with a 1-byte payload');
        }
        $code = 1005;
        $reason = '';
        if ($len >= 2) {
            $code = unpack('n', $payload)[1];
            $reason = substr($payload, 2);
            if (!self::validCloseCode($code)) {
                $this->closeReceived = false;
                throw new ProtocolException("invalid close code $code");
            }
            if (!self::validUtf8($reason)) {
                $this->closeReceived = false;
                throw new ProtocolException('close reason is not valid UTF-8', 1007);
            }
        }
        if (!$this->closeSent) {
            // The server started the close: its code is what the application hears.
            $this->closeCode = $code;
            $this->closeReason = $reason;
            $this->state = self::CLOSING;
            $echo = $code === 1005 ? '' : pack('n', $code);
            $this->closeSent = true;
            $this->write(FrameCodec::encode(Frame::CLOSE, $echo, true, random_bytes(4)));
        }
        $this->awaitServerClose();
    }

    private function protocolError(ProtocolException $e): void
    {
        if ($this->onError !== null) {
            ($this->onError)($e);
        }
        if ($this->socket === null) {
            return;
        }
        if ($e->closeCode === 0 || $this->state === self::CONNECTING) {
            $this->fail(null);
            return;
        }
        $this->closeCode = $e->closeCode;
        $this->closeReason = $e->getMessage();
        if (!$this->closeSent) {
            $this->sendClose($e->closeCode, '');
        }
        // Nothing more from this server is worth reading: wait for its close or EOF only.
        $this->closeReceived = true;
        $this->awaitServerClose();
    }

    private function sendClose(int $code, string $reason): void
    {
        $this->state = self::CLOSING;
        $this->closeSent = true;
        $reason = substr($reason, 0, 123);
        $this->write(FrameCodec::encode(Frame::CLOSE, pack('n', $code) . $reason, true, random_bytes(4)));
        if ($this->deadline === null) {
            $this->deadline = $this->loop->addTimer((float) $this->options['close_timeout'], function (): void {
                $this->deadline = null;
                $this->finish();
            });
        }
    }

    private function awaitServerClose(): void
    {
        if ($this->deadline === null) {
            $this->deadline = $this->loop->addTimer((float) $this->options['close_timeout'], function (): void {
                $this->deadline = null;
                $this->finish();
            });
        }
    }

    private function eof(): void
    {
        if ($this->state === self::CONNECTING) {
            $this->fail(new ConnectionException("{$this->host}:{$this->port} closed the connection during the handshake"));
            return;
        }
        if (!$this->closeReceived) {
            $this->closeCode = 1006;
            $this->closeReason = 'connection closed without a close frame';
        }
        $this->finish();
    }

    private function write(string $bytes): void
    {
        $this->out .= $bytes;
        $this->flush();
    }

    private function flush(): void
    {
        if ($this->socket === null) {
            return;
        }
        while ($this->out !== '') {
            $n = @fwrite($this->socket, $this->out, 1 << 20);
            if ($n === false) {
                $this->fail(new ConnectionException('write failed: connection lost'));
                return;
            }
            if ($n === 0) {
                break;
            }
            $this->out = (string) substr($this->out, $n);
        }
        if ($this->out !== '' && !$this->writing) {
            $this->writing = true;
            $this->loop->addWriteStream($this->socket, fn () => $this->flush());
        } elseif ($this->out === '' && $this->writing) {
            $this->writing = false;
            $this->loop->removeWriteStream($this->socket);
        }
    }

    /** Ends with an error: 1006, `onError` then `onClose`. */
    private function fail(?\Throwable $e): void
    {
        if ($e !== null && $this->onError !== null) {
            ($this->onError)($e);
        }
        if (!$this->closeReceived) {
            $this->closeCode = $this->closeSent ? $this->closeCode : 1006;
            if ($e !== null && !$this->closeSent) {
                $this->closeReason = $e->getMessage();
            }
        }
        $this->out = '';
        $this->finish();
    }

    private function finish(): void
    {
        if ($this->socket !== null) {
            $this->loop->removeReadStream($this->socket);
            $this->loop->removeWriteStream($this->socket);
            if ($this->out !== '') {
                // A last close frame: one blocking-free attempt, the peer is going anyway.
                @fwrite($this->socket, $this->out);
            }
            @fclose($this->socket);
            $this->socket = null;
        }
        if ($this->deadline !== null) {
            $this->loop->cancel($this->deadline);
            $this->deadline = null;
        }
        if ($this->state === self::CLOSED) {
            return;
        }
        $this->state = self::CLOSED;
        if ($this->onClose !== null) {
            ($this->onClose)($this->closeCode, $this->closeReason);
        }
    }

    /** Close codes a peer may send (RFC 6455 §7.4, IANA registry): 1004-1006, 1015 never travel. */
    public static function validCloseCode(int $code): bool
    {
        return ($code >= 1000 && $code <= 1003) || ($code >= 1007 && $code <= 1014) || ($code >= 3000 && $code <= 4999);
    }

    /**
     * Whether `$s` can begin a valid UTF-8 text. `$tail` gets the bytes of an incomplete last
     * character, which is checked by completing it with the smallest continuation bytes its
     * lead byte allows (`E0` needs `A0`, `F0` needs `90`).
     */
    public static function utf8Prefix(string $s, ?string &$tail = null): bool
    {
        $tail = '';
        $len = strlen($s);
        for ($i = $len - 1; $i >= 0 && $i >= $len - 4; $i--) {
            $b = ord($s[$i]);
            if (($b & 0xC0) === 0x80) {
                continue;
            }
            $need = $b < 0x80 ? 1 : ($b >= 0xF0 ? 4 : ($b >= 0xE0 ? 3 : 2));
            if ($len - $i >= $need) {
                break;
            }
            $tail = substr($s, $i);
            $pad = '';
            for ($k = $len - $i; $k < $need; $k++) {
                $pad .= $k === 1 ? ($b === 0xE0 ? "\xA0" : ($b === 0xF0 ? "\x90" : "\x80")) : "\x80";
            }
            return self::validUtf8($s . $pad);
        }
        return self::validUtf8($s);
    }

    /** PCRE's UTF-8 check: rejects overlongs, surrogates and code points over U+10FFFF. */
    public static function validUtf8(string $s): bool
    {
        return $s === '' || preg_match('//u', $s) === 1;
    }
}
