<?php

declare(strict_types=1);

namespace Tickwire;

use Tickwire\Exception\ClosedException;
use Tickwire\Exception\DeltaException;
use Tickwire\Exception\HandshakeException;
use Tickwire\Exception\ProtocolException;
use Tickwire\Exception\ServerException;
use Tickwire\WebSocket\Connection;

/**
 * The tickwire WebSocket client: subscribe, receive, publish, on an event loop, across
 * reconnects.
 *
 * Delivery (the same rules as the Rust client, clients/rust/src/connection.rs): per topic,
 * publications reach `onMessage` in seq order and never twice. The client tracks, per topic, the
 * last seq it delivered and the topic's epoch; when the connection drops it reconnects with
 * exponential backoff and full jitter and subscribes everything again with `since` those
 * positions. The server then replays exactly the missed publications, or, when it cannot
 * (history expired, a new epoch after a server restart), the client calls `onReset($topic)` and
 * the topic's fresh snapshot follows. A snapshot with an `epoch` outside any subscribe reply (a
 * cluster's reset) also gives `onReset` then the snapshot.
 *
 * Deltas: subscriptions made with `['delta' => 'fossil']` may receive updates as Fossil deltas;
 * the client keeps the last data text of those topics, applies each delta (length and checksum
 * checked) and hands the application full data. A delta that cannot be applied is not
 * delivered: `onError` gets a {@see DeltaException} and the client subscribes the topic again
 * with `since` its last position, so the missed publications come as full data.
 *
 * Tokens: `token` is a string or a callable returning one (asked on every connect). With a
 * callable, the client sends an `auth` request with a fresh token `refresh_margin` seconds before
 * the current one's `exp`. A handshake refused with 401/403 or a close with 4003 (token expired)
 * ends the client unless the provider, asked again right then, returns a different token.
 *
 * Requests return a {@see Deferred}. Subscribe and unsubscribe requests in flight when the
 * connection drops are sent again on the next one; a publish in flight fails with
 * {@see ClosedException} (it may or may not have happened). Requests made while disconnected
 * wait for the next connection.
 */
final class Client
{
    /** A re-subscription asks for at most this many `since` bytes per request (server cap 64 KiB). */
    private const SINCE_BYTES = 56 << 10;
    /** Subscriptions per re-subscribe request. */
    private const BATCH_TOPICS = 256;
    /** Requests waiting for a connection: past this many, new ones are refused at once. */
    private const MAX_QUEUED = 10_000;
    /** A connection that lasted less than this does not reset the backoff. */
    private const STABLE_AFTER = 1.0;
    private const JSON_OUT = JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR;

    private LoopInterface $loop;
    private array $options;
    private ?Connection $ws = null;
    private bool $connected = false;
    private bool $closed = false;
    private ?string $token = null;
    private ?string $freshToken = null;
    private int $failures = 0;
    private float $openedAt = 0.0;
    private int $nextId = 1;
    /** @var list<int> */
    private array $timers = [];
    private ?int $reconnectTimer = null;
    private ?int $refreshTimer = null;
    private float $lastHeard = 0.0;

    /** @var list<array{pattern: string, options: array}> confirmed subscriptions, in order */
    private array $subscriptions = [];
    /** @var array<string, array{seq: int, epoch: ?string}> */
    private array $tracks = [];
    /** @var array<string, array{seq: int, text: string}> last data text of delta topics */
    private array $bases = [];
    /** @var array<string, true> topics with a resync in flight */
    private array $resyncing = [];
    /** @var array<int, array> requests waiting for their reply, by id */
    private array $pending = [];
    /** @var list<array> requests to send once connected */
    private array $queue = [];
    /**
     * Refused subscribes waiting for a retry, by number; `timer` is null once due while
     * disconnected (the next connection sends it at once).
     * @var array<int, array>
     */
    private array $retries = [];
    private int $nextRetry = 1;

    /** @var array<string, ?callable> */
    private array $on = ['open' => null, 'message' => null, 'close' => null, 'error' => null, 'reset' => null];

    /**
     * Options: `token` (string or callable(): string), `refresh_margin` (seconds, default 30),
     * `reconnect` (bool, default true), `backoff_initial` (0.5 s), `backoff_max` (30 s),
     * `max_attempts` (null: forever), `retry_subscribe` (retry subscribes refused with
     * `unavailable`/`rate_limited`, default true), `ping_interval` (20 s, null: none),
     * `idle_timeout` (60 s: nothing heard for that long counts as a lost connection; null: none),
     * `connect_timeout` (10 s), `tls` (ssl context options), `headers`, `max_message_bytes`
     * (16 MiB), `deflate` (offer permessage-deflate, default true when ext-zlib is loaded).
     */
    public function __construct(private string $url, array $options = [], ?LoopInterface $loop = null)
    {
        $this->loop = $loop ?? new EventLoop();
        $this->options = $options + [
            'token' => null,
            'refresh_margin' => 30.0,
            'reconnect' => true,
            'backoff_initial' => 0.5,
            'backoff_max' => 30.0,
            'max_attempts' => null,
            'retry_subscribe' => true,
            'ping_interval' => 20.0,
            'idle_timeout' => 60.0,
            'connect_timeout' => 10.0,
            'tls' => [],
            'headers' => [],
            'max_message_bytes' => 16 << 20,
            'deflate' => true,
        ];
    }

    /** Called on every (re)connection, before the re-subscription's replies. */
    public function onOpen(callable $f): self { $this->on['open'] = $f; return $this; }
    /** `fn(Update $u)`: every snapshot and update, with full data. */
    public function onMessage(callable $f): self { $this->on['message'] = $f; return $this; }
    /**
     * `fn(int $code, string $reason)`: every time an open connection ends (1006: lost without a
     * close frame), and once with 1006 when the client stops without having opened one.
     */
    public function onClose(callable $f): self { $this->on['close'] = $f; return $this; }
    /** `fn(\Throwable $e)`: failures nobody else is told of (refused reconnects, protocol errors, deltas). */
    public function onError(callable $f): self { $this->on['error'] = $f; return $this; }
    /** `fn(string $topic)`: the topic's stream could not be continued; its snapshot follows, if it has one. */
    public function onReset(callable $f): self { $this->on['reset'] = $f; return $this; }

    public function loop(): LoopInterface
    {
        return $this->loop;
    }

    public function isConnected(): bool
    {
        return $this->connected;
    }

    /** Starts connecting (once; the first request does it too); everything else happens on the loop. */
    public function connect(): self
    {
        if ($this->ws === null && !$this->closed && $this->reconnectTimer === null) {
            $this->open();
        }
        return $this;
    }

    /** Connects if needed and runs the loop until {@see close()} (or the loop is stopped). */
    public function run(): void
    {
        $this->connect();
        $this->loop->run();
    }

    /** Closes for good with 1000; requests still waiting fail with {@see ClosedException}. */
    public function close(): void
    {
        if ($this->closed) {
            return;
        }
        $this->closed = true;
        $this->cancelTimers();
        if ($this->ws !== null) {
            $this->ws->close(1000, 'client closed');
        } else {
            $this->failAll();
        }
    }

    /**
     * Subscribes to topics or patterns. Options: `max_rate` (updates a second per topic),
     * `delta` (`'fossil'`). Resolves with the `subscribed` reply as an array; rejects with a
     * {@see ServerException} when refused.
     *
     * @param list<string> $topics
     */
    public function subscribe(array $topics, array $options = []): Deferred
    {
        $options = self::normalize($options);
        $d = new Deferred();
        $this->request(['kind' => 'subscribe', 'topics' => array_values($topics), 'options' => $options, 'deferred' => $d]);
        return $d;
    }

    /** @param list<string> $topics */
    public function unsubscribe(array $topics): Deferred
    {
        $d = new Deferred();
        $topics = array_values($topics);
        $this->cancelRetries($topics);
        $this->request(['kind' => 'unsubscribe', 'topics' => $topics, 'deferred' => $d]);
        return $d;
    }

    /** Publishes `$data` (JSON-encoded) over the WebSocket; resolves with a {@see Published}. */
    public function publish(string $topic, mixed $data): Deferred
    {
        $d = new Deferred();
        $this->request(['kind' => 'publish', 'topic' => $topic, 'data' => json_encode($data, self::JSON_OUT), 'deferred' => $d]);
        return $d;
    }

    /** Sends an `auth` request with a token from the provider now; resolves with `dropped`. */
    public function refreshToken(?string $token = null): Deferred
    {
        $d = new Deferred();
        try {
            $token ??= $this->askToken();
        } catch (\Throwable $e) {
            $d->reject($e);
            return $d;
        }
        if ($token === null) {
            $d->reject(new \LogicException('no token provider'));
            return $d;
        }
        $this->request(['kind' => 'auth', 'token' => $token, 'deferred' => $d]);
        return $d;
    }

    // ---- connecting ----------------------------------------------------------------------

    private function open(): void
    {
        $this->reconnectTimer = null;
        try {
            $token = $this->freshToken ?? $this->askToken();
        } catch (\Throwable $e) {
            $this->emitError($e);
            $this->scheduleReconnect();
            return;
        }
        $this->freshToken = null;
        $this->token = $token;
        $headers = $this->options['headers'];
        if ($token !== null) {
            $headers['Authorization'] = 'Bearer ' . $token;
        }
        $ws = new Connection($this->loop, $this->url, [
            'headers' => $headers,
            'timeout' => $this->options['connect_timeout'],
            'tls' => $this->options['tls'],
            'max_message_bytes' => $this->options['max_message_bytes'],
            'deflate' => $this->options['deflate'],
        ]);
        $this->ws = $ws;
        $refused = null;
        $ws->onOpen(fn () => $this->opened());
        $ws->onMessage(function (string $payload, bool $binary): void {
            $this->lastHeard = hrtime(true) / 1e9;
            if ($binary) {
                $this->emitError(new ProtocolException('unexpected binary message of ' . strlen($payload) . ' bytes', 0));
                return;
            }
            try {
                $this->onText($payload);
            } catch (\Throwable $e) {
                // Thrown by an application callback (a Deferred's then() included): reported,
                // and the connection's state stays consistent.
                if ($this->on['error'] === null) {
                    throw $e;
                }
                $this->emitError($e);
            }
        });
        $ws->onError(function (\Throwable $e) use (&$refused): void {
            if ($e instanceof HandshakeException && $e->isAuthFailure()) {
                $refused = $e;
                return; // reported below, once it is known whether a new token helps
            }
            $this->emitError($e);
        });
        $ws->onClose(function (int $code, string $reason) use (&$refused): void {
            $this->ended($code, $reason, $refused);
        });
        $ws->connect();
    }

    private function opened(): void
    {
        $this->connected = true;
        $this->openedAt = hrtime(true) / 1e9;
        $this->lastHeard = $this->openedAt;
        $this->emit('open');
        if (!$this->connected) {
            return;
        }
        $this->resubscribe();
        $queue = $this->queue;
        $this->queue = [];
        foreach ($queue as $request) {
            $this->send($request);
        }
        // A new connection may reach a node that can serve them: retry now.
        foreach ($this->retries as $n => $retry) {
            $retry['timer'] !== null && $this->loop->cancel($retry['timer']);
            unset($this->retries[$n]);
            $this->sendRetry($retry);
        }
        if ($this->options['ping_interval'] !== null) {
            $this->timers[] = $this->loop->addPeriodicTimer((float) $this->options['ping_interval'], function (): void {
                if ($this->ws?->isOpen()) {
                    $this->ws->ping();
                }
            });
        }
        if ($this->options['idle_timeout'] !== null) {
            $idle = (float) $this->options['idle_timeout'];
            $this->timers[] = $this->loop->addPeriodicTimer(min(1.0, $idle / 4), function () use ($idle): void {
                $heard = max($this->lastHeard, $this->ws?->lastReceived() ?? 0.0);
                if ($this->connected && hrtime(true) / 1e9 - $heard > $idle) {
                    $this->emitError(new ClosedException("nothing received from the server for $idle s"));
                    $this->ws?->close(4000, 'idle');
                }
            });
        }
        $this->scheduleRefresh();
    }

    private function ended(int $code, string $reason, ?HandshakeException $refused): void
    {
        $wasOpen = $this->connected;
        $this->connected = false;
        $this->ws = null;
        $this->cancelTimers();
        if ($wasOpen) {
            $stable = hrtime(true) / 1e9 - $this->openedAt >= self::STABLE_AFTER;
            $this->failures = $stable ? 0 : $this->failures + 1;
            $this->connectionLost();
            $this->emit('close', $code, $reason);
        }
        if ($this->closed || !$this->options['reconnect']) {
            $this->closed = true;
            $this->failAll();
            if (!$wasOpen) {
                $this->emit('close', $code, $reason);
            }
            return;
        }
        if ($refused !== null || $code === 4003) {
            // The same token would only be refused again: only a different one is worth a try.
            $fresh = null;
            try {
                $fresh = is_callable($this->options['token']) ? $this->askToken() : null;
            } catch (\Throwable $e) {
                $this->emitError($e);
            }
            if ($fresh === null || $fresh === $this->token) {
                $this->closed = true;
                $this->failAll();
                if ($refused !== null) {
                    $this->emitError($refused);
                }
                if (!$wasOpen) {
                    $this->emit('close', $code, $reason);
                }
                return;
            }
            if ($refused !== null) {
                $this->emitError($refused);
            }
            $this->freshToken = $fresh;
        }
        $this->scheduleReconnect();
    }

    private function scheduleReconnect(): void
    {
        $max = $this->options['max_attempts'];
        if ($max !== null && $this->failures >= $max) {
            $this->closed = true;
            $this->failAll();
            $this->emit('close', 1006, 'gave up reconnecting');
            return;
        }
        $delay = $this->backoff($this->failures);
        $this->failures++;
        $this->reconnectTimer = $this->loop->addTimer($delay, fn () => $this->open());
    }

    /** Full jitter: uniform in [0, min(max, initial * 2^attempt)]; the first retry is quick. */
    private function backoff(int $attempt): float
    {
        $ceiling = min((float) $this->options['backoff_max'], $this->options['backoff_initial'] * (2 ** min($attempt, 30)));
        return $ceiling * mt_rand() / mt_getrandmax();
    }

    private function askToken(): ?string
    {
        $token = $this->options['token'];
        if (is_callable($token)) {
            return (string) $token();
        }
        return $token;
    }

    /** With a token provider: an `auth` request `refresh_margin` before the token's `exp`. */
    private function scheduleRefresh(): void
    {
        if ($this->refreshTimer !== null) {
            $this->loop->cancel($this->refreshTimer);
            $this->refreshTimer = null;
        }
        if (!is_callable($this->options['token']) || $this->token === null) {
            return;
        }
        $exp = self::tokenExpiry($this->token);
        if ($exp === null) {
            return;
        }
        $left = $exp - microtime(true);
        $in = max(1.0, min($left - (float) $this->options['refresh_margin'], $left / 2));
        $this->refreshTimer = $this->loop->addTimer($in, function (): void {
            $this->refreshTimer = null;
            $this->refreshToken()->then(null, fn (\Throwable $e) => $this->emitError($e));
        });
    }

    /** The `exp` claim of a JWT, unverified (the server verifies; this only times the refresh). */
    public static function tokenExpiry(string $jwt): ?int
    {
        $parts = explode('.', $jwt);
        if (count($parts) !== 3) {
            return null;
        }
        $claims = json_decode((string) base64_decode(strtr($parts[1], '-_', '+/'), false), true);
        return is_array($claims) && is_int($claims['exp'] ?? null) ? $claims['exp'] : null;
    }

    private function cancelTimers(): void
    {
        foreach ($this->timers as $t) {
            $this->loop->cancel($t);
        }
        $this->timers = [];
        if ($this->refreshTimer !== null) {
            $this->loop->cancel($this->refreshTimer);
            $this->refreshTimer = null;
        }
        if ($this->closed) {
            if ($this->reconnectTimer !== null) {
                $this->loop->cancel($this->reconnectTimer);
                $this->reconnectTimer = null;
            }
            foreach ($this->retries as $retry) {
                $retry['timer'] !== null && $this->loop->cancel($retry['timer']);
            }
            $this->retries = [];
        }
    }

    /** In-flight publishes fail; subscribes and unsubscribes go again on the next connection. */
    private function connectionLost(): void
    {
        $replay = [];
        foreach ($this->pending as $p) {
            switch ($p['kind']) {
                case 'subscribe':
                case 'unsubscribe':
                    $replay[] = $p;
                    break;
                case 'retry':
                    if ($p['topics']) {
                        $this->scheduleRetry($p['topics'], $p['options'], $p['attempt'], 0.0);
                    }
                    break;
                case 'publish':
                case 'auth':
                    $p['deferred']->reject(new ClosedException('the connection was lost before the reply'));
                    break;
            }
        }
        $this->pending = [];
        $this->resyncing = [];
        $this->queue = array_merge($replay, $this->queue);
    }

    private function failAll(): void
    {
        $error = new ClosedException('the client is closed');
        foreach (array_merge($this->pending, $this->queue) as $p) {
            if (isset($p['deferred'])) {
                $p['deferred']->reject($error);
            }
        }
        $this->pending = [];
        $this->queue = [];
    }

    // ---- requests ------------------------------------------------------------------------

    private function request(array $request): void
    {
        if ($this->closed) {
            $request['deferred']->reject(new ClosedException('the client is closed'));
            return;
        }
        if ($this->connected) {
            $this->send($request);
        } elseif (count($this->queue) >= self::MAX_QUEUED) {
            $request['deferred']->reject(new ClosedException(self::MAX_QUEUED . ' requests already wait for a connection'));
        } else {
            $this->queue[] = $request;
            $this->connect(); // a request is a reason to connect; it goes out once open
        }
    }

    private function send(array $request, array $since = []): void
    {
        $id = $this->nextId++;
        $body = match ($request['kind']) {
            'subscribe', 'resubscribe', 'retry', 'resync' => self::subscribeRequest($id, $request['topics'], $request['options'], $since),
            'unsubscribe' => json_encode(['op' => 'unsubscribe', 'id' => $id, 'topics' => $request['topics']], self::JSON_OUT),
            'publish' => '{"op":"publish","id":' . $id . ',"topic":' . json_encode($request['topic'], self::JSON_OUT)
                . ',"data":' . $request['data'] . '}',
            'auth' => json_encode(['op' => 'auth', 'id' => $id, 'token' => $request['token']], self::JSON_OUT),
        };
        $this->pending[$id] = $request;
        $this->ws->send($body);
    }

    private static function subscribeRequest(int $id, array $topics, array $options, array $since): string
    {
        $req = ['op' => 'subscribe', 'id' => $id, 'topics' => $topics];
        if ($since) {
            // An object even when PHP made the topic names integer keys ("0", "42").
            $req['since'] = (object) $since;
        }
        return json_encode($req + $options, self::JSON_OUT);
    }

    /** Subscribe options as the client keeps and compares them: known keys, fixed order. */
    private static function normalize(array $options): array
    {
        $out = [];
        if (isset($options['max_rate'])) {
            $out['max_rate'] = $options['max_rate'];
        }
        if (isset($options['delta']) && $options['delta'] !== false) {
            $out['delta'] = $options['delta'] === true ? 'fossil' : $options['delta'];
        }
        return $out;
    }

    /**
     * Subscribes everything again, grouped by options, each tracked topic's `since` with the
     * first request whose patterns match it, so that no earlier request snapshots it over a gap.
     */
    private function resubscribe(): void
    {
        $this->pruneTracks();
        $groups = [];
        foreach ($this->subscriptions as $s) {
            $groups[json_encode($s['options'])][] = $s;
        }
        $assigned = [];
        foreach ($groups as $subs) {
            foreach (array_chunk($subs, self::BATCH_TOPICS) as $chunk) {
                $topics = array_column($chunk, 'pattern');
                $since = [];
                $asked = [];
                $bytes = 0;
                foreach ($topics as $pattern) {
                    $bytes += strlen($pattern) + 3;
                    foreach ($this->tracks as $topic => $track) {
                        $topic = (string) $topic;
                        if (isset($assigned[$topic]) || !self::matches($pattern, $topic)) {
                            continue;
                        }
                        $assigned[$topic] = true;
                        $asked[$topic] = true;
                        $epoch = $track['epoch'] ?? '';
                        $cost = strlen($topic) + strlen($epoch) + 40;
                        if ($bytes + $cost > self::SINCE_BYTES) {
                            continue; // no room to ask: the topic resets, its snapshot follows
                        }
                        $bytes += $cost;
                        $since[$topic] = ['seq' => $track['seq'], 'epoch' => $epoch];
                    }
                }
                $request = ['kind' => 'resubscribe', 'topics' => $topics, 'options' => $chunk[0]['options'], 'since' => $asked];
                $this->send($request, $since);
            }
        }
    }

    private function scheduleRetry(array $topics, array $options, int $attempt, float $delay): void
    {
        $n = $this->nextRetry++;
        $timer = $this->loop->addTimer($delay, function () use ($n): void {
            $retry = $this->retries[$n] ?? null;
            if ($retry === null) {
                return;
            }
            if ($this->connected) {
                unset($this->retries[$n]);
                $this->sendRetry($retry);
            } else {
                $this->retries[$n]['timer'] = null; // waits for opened(), which sends it at once
            }
        });
        $this->retries[$n] = ['kind' => 'retry', 'topics' => $topics, 'options' => $options, 'attempt' => $attempt, 'timer' => $timer];
    }

    /** A retry asks to recover the tracked topics that only its patterns cover. */
    private function sendRetry(array $retry): void
    {
        $since = [];
        $asked = [];
        foreach ($this->tracks as $topic => $track) {
            $topic = (string) $topic;
            if ($this->covers($topic) || !self::matchesAny($retry['topics'], $topic)) {
                continue;
            }
            $asked[$topic] = true;
            $since[$topic] = ['seq' => $track['seq'], 'epoch' => $track['epoch'] ?? ''];
        }
        $retry['since'] = $asked;
        $this->send($retry, $since);
    }

    private function cancelRetries(array $topics): void
    {
        foreach ($this->retries as $n => $retry) {
            $left = array_values(array_diff($retry['topics'], $topics));
            if (!$left) {
                $retry['timer'] !== null && $this->loop->cancel($retry['timer']);
                unset($this->retries[$n]);
            } else {
                $this->retries[$n]['topics'] = $left;
            }
        }
        foreach ($this->pending as $id => $p) {
            if ($p['kind'] === 'retry') {
                $this->pending[$id]['topics'] = array_values(array_diff($p['topics'], $topics));
            }
        }
    }

    // ---- what the server sends -----------------------------------------------------------

    private function onText(string $text): void
    {
        try {
            $frame = json_decode($text, true, 512, JSON_BIGINT_AS_STRING | JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            $this->emitError(new ProtocolException('a server message that is not JSON: ' . $e->getMessage(), 0));
            return;
        }
        $type = is_array($frame) ? ($frame['type'] ?? null) : null;
        switch ($type) {
            case 'snapshot':
            case 'update':
                if (array_key_exists('delta', $frame)) {
                    $this->onDelta($frame);
                } else {
                    $this->onDelivery($frame, self::dataText($text, $frame));
                }
                return;
            case 'subscribed':
                $this->onSubscribed($frame);
                return;
            case 'unsubscribed':
                $p = $this->take($frame, 'unsubscribed');
                if ($p !== null) {
                    $this->removeSubscriptions($p['topics']);
                    $p['deferred']->resolve($frame);
                }
                return;
            case 'published':
                $p = $this->take($frame, 'published');
                if ($p !== null) {
                    $p['deferred']->resolve(new Published((string) $frame['topic'], (int) $frame['seq']));
                }
                return;
            case 'authed':
                $p = $this->take($frame, 'authed');
                if ($p !== null) {
                    $this->token = $p['token'];
                    $this->removeSubscriptions($frame['dropped'] ?? []);
                    $this->scheduleRefresh();
                    $p['deferred']->resolve($frame['dropped'] ?? []);
                }
                return;
            case 'pong':
                return;
            case 'error':
                $this->onErrorReply($frame);
                return;
            default:
                $this->emitError(new ProtocolException('unknown server message: ' . substr($text, 0, 200), 0));
        }
    }

    /**
     * The data's text byte for byte: `data` is the last member of a snapshot or update frame
     * (docs/protocol.md §4.1), before `epoch` in a cluster's reset snapshot.
     */
    private static function dataText(string $text, array $frame): string
    {
        $at = strpos($text, '"data":');
        $end = strlen($text) - 1;
        if (isset($frame['epoch'])) {
            $suffix = ',"epoch":' . json_encode($frame['epoch'], self::JSON_OUT) . '}';
            if (str_ends_with($text, $suffix)) {
                $end = strlen($text) - strlen($suffix);
            } else {
                $at = false;
            }
        }
        if ($at === false) {
            return json_encode($frame['data'], self::JSON_OUT); // not the published bytes, but the value
        }
        return substr($text, $at + 7, $end - $at - 7);
    }

    /** Takes the request a reply answers; a reply of the wrong type fails that request. */
    private function take(array $frame, string $type): ?array
    {
        $id = $frame['id'] ?? null;
        $p = is_int($id) ? ($this->pending[$id] ?? null) : null;
        if ($p === null) {
            return null;
        }
        unset($this->pending[$id]);
        $expected = match ($p['kind']) {
            'subscribe', 'resubscribe', 'retry', 'resync' => 'subscribed',
            'unsubscribe' => 'unsubscribed',
            'publish' => 'published',
            'auth' => 'authed',
        };
        if ($expected !== $type) {
            $e = new ProtocolException("unexpected `$type` reply to a {$p['kind']}", 0);
            isset($p['deferred']) ? $p['deferred']->reject($e) : $this->emitError($e);
            return null;
        }
        return $p;
    }

    private function onSubscribed(array $frame): void
    {
        $p = $this->take($frame, 'subscribed');
        if ($p === null) {
            return;
        }
        switch ($p['kind']) {
            case 'subscribe':
                $this->confirmed($p['topics'], $p['options']);
                $this->applyPositions($frame, []);
                $p['deferred']->resolve($frame);
                return;
            case 'resubscribe':
                $this->applyPositions($frame, $p['since']);
                return;
            case 'retry':
                if (!$p['topics']) {
                    return; // unsubscribed while in flight
                }
                $this->confirmed($p['topics'], $p['options']);
                $this->applyPositions($frame, $p['since']);
                return;
            case 'resync':
                unset($this->resyncing[$p['topic']]);
                $this->applyPositions($frame, [$p['topic'] => true]);
                return;
        }
    }

    private function onErrorReply(array $frame): void
    {
        $error = new ServerException((string) ($frame['code'] ?? ''), (string) ($frame['message'] ?? ''));
        $id = $frame['id'] ?? null;
        $p = is_int($id) ? ($this->pending[$id] ?? null) : null;
        if ($p === null) {
            $this->emitError($error);
            return;
        }
        unset($this->pending[$id]);
        $retry = $this->options['retry_subscribe'] && $error->isTransient();
        switch ($p['kind']) {
            case 'subscribe':
                if ($retry) {
                    $this->scheduleRetry($p['topics'], $p['options'], 1, $this->backoff(0));
                }
                $p['deferred']->reject($error);
                return;
            case 'resubscribe':
            case 'retry':
                // The server refuses what it accepted before: drop those, retry when transient.
                // The retry is scheduled before the tracks are pruned, so that it keeps them and
                // asks to recover them (pruning first would turn a gap into a silent snapshot).
                $this->removeSubscriptions($p['topics'], false);
                $attempt = $p['attempt'] ?? 0;
                if ($retry && $p['topics']) {
                    $this->scheduleRetry($p['topics'], $p['options'], $attempt + 1, $this->backoff($attempt));
                } else {
                    $this->emitError($error);
                }
                $this->pruneTracks();
                return;
            case 'resync':
                unset($this->resyncing[$p['topic']]);
                $this->emitError($error);
                return;
            default:
                $p['deferred']->reject($error);
        }
    }

    /**
     * Applies a `subscribed` reply's positions. `$since` are the topics the request asked to
     * recover: each is recovered (its missed updates follow), reset (a snapshot follows), or
     * gone from the server (reset; its next stream starts at seq 1).
     */
    private function applyPositions(array $frame, array $since): void
    {
        $positions = $frame['positions'] ?? [];
        $recovered = $frame['recovered'] ?? [];
        $resets = [];
        foreach ($positions as $topic => $pos) {
            $topic = (string) $topic;
            $fresh = ['seq' => max(0, (int) $pos['seq'] - 1), 'epoch' => (string) $pos['epoch']];
            if (isset($since[$topic])) {
                if (($recovered[$topic] ?? false) === true) {
                    if (isset($this->tracks[$topic])) {
                        $this->tracks[$topic]['epoch'] = (string) $pos['epoch'];
                    }
                } else {
                    $resets[] = $topic;
                    $this->tracks[$topic] = $fresh;
                }
                continue;
            }
            $track = $this->tracks[$topic] ?? null;
            if ($track === null) {
                $this->tracks[$topic] = $fresh;
            } elseif ($track['epoch'] === null) {
                $this->tracks[$topic]['epoch'] = (string) $pos['epoch'];
            } elseif ($track['epoch'] !== (string) $pos['epoch']) {
                $resets[] = $topic; // a different stream than the one delivered so far
                $this->tracks[$topic] = $fresh;
            }
        }
        foreach (array_keys($since) as $topic) {
            $topic = (string) $topic;
            if (!isset($positions[$topic])) {
                unset($this->bases[$topic]);
                $track = $this->tracks[$topic] ?? null;
                unset($this->tracks[$topic]);
                if ($track !== null && $track['seq'] > 0) {
                    $resets[] = $topic;
                }
            }
        }
        foreach ($resets as $topic) {
            unset($this->bases[$topic]); // another stream: its next delta cannot apply to this data
            $this->emit('reset', $topic);
        }
    }

    private function onDelivery(array $frame, string $text): void
    {
        $topic = (string) $frame['topic'];
        $seq = (int) $frame['seq'];
        $update = new Update((string) $frame['type'], $topic, $seq, (int) $frame['ts'], $frame['data'], $text);
        if (isset($frame['epoch'])) {
            // A reset: the stream restarted, possibly at a lower seq, so the old track is void.
            $this->tracks[$topic] = ['seq' => $seq, 'epoch' => (string) $frame['epoch']];
            unset($this->bases[$topic]);
            $this->keepBase($topic, $seq, $text);
            $this->emit('reset', $topic);
            $this->emit('message', $update);
            return;
        }
        // Before the duplicate check: whatever the server sent last is what it bases on.
        $this->keepBase($topic, $seq, $text);
        $track = $this->tracks[$topic] ?? null;
        if ($track !== null && $seq <= $track['seq']) {
            return;
        }
        if ($track === null) {
            $this->tracks[$topic] = ['seq' => $seq, 'epoch' => null];
        } else {
            $this->tracks[$topic]['seq'] = $seq;
        }
        $this->emit('message', $update);
    }

    private function onDelta(array $frame): void
    {
        $topic = (string) $frame['topic'];
        $seq = (int) $frame['seq'];
        try {
            $base = $this->bases[$topic] ?? null;
            if ($base === null) {
                throw new DeltaException("delta for $topic seq $seq: no data to apply it to");
            }
            if ($base['seq'] + 1 !== $seq) {
                throw new DeltaException("delta for $topic seq $seq: it applies to seq " . ($seq - 1) . ", the last data is seq {$base['seq']}");
            }
            $text = Fossil::apply($base['text'], (string) $frame['delta'], $this->options['max_message_bytes'] * 4);
            try {
                $data = json_decode($text, true, 512, JSON_BIGINT_AS_STRING | JSON_THROW_ON_ERROR);
            } catch (\JsonException $e) {
                throw new DeltaException("delta for $topic seq $seq: its result is not JSON");
            }
        } catch (DeltaException $e) {
            if (isset($this->resyncing[$topic])) {
                return; // deltas sent before the server saw the resync: expected
            }
            unset($this->bases[$topic]);
            $this->resyncing[$topic] = true;
            $this->emitError($e);
            $this->resync($topic, $seq);
            return;
        }
        $frame['data'] = $data;
        $this->onDelivery($frame, $text);
    }

    /** Sends the topic's subscription again with `since` its last position: full data follows. */
    private function resync(string $topic, int $seq): void
    {
        $sub = null;
        foreach ($this->subscriptions as $s) {
            if (self::matches($s['pattern'], $topic) && ($sub === null || (!isset($sub['options']['delta']) && isset($s['options']['delta'])))) {
                $sub = $s;
            }
        }
        if ($sub === null || !$this->connected) {
            unset($this->resyncing[$topic]);
            return;
        }
        $track = $this->tracks[$topic] ?? null;
        $since = [$topic => ['seq' => min($track['seq'] ?? PHP_INT_MAX, $seq - 1), 'epoch' => $track['epoch'] ?? '']];
        $this->send(['kind' => 'resync', 'topic' => $topic, 'topics' => [$sub['pattern']], 'options' => $sub['options']], $since);
    }

    private function keepBase(string $topic, int $seq, string $text): void
    {
        if (!isset($this->bases[$topic]) && !$this->deltaFor($topic)) {
            return;
        }
        if (isset($this->bases[$topic]) && $this->bases[$topic]['seq'] >= $seq) {
            return; // a replayed or duplicate frame does not move the base back
        }
        $this->bases[$topic] = ['seq' => $seq, 'text' => $text];
    }

    // ---- subscription bookkeeping --------------------------------------------------------

    private function confirmed(array $topics, array $options): void
    {
        foreach ($topics as $pattern) {
            $found = false;
            foreach ($this->subscriptions as $i => $s) {
                if ($s['pattern'] === $pattern) {
                    $this->subscriptions[$i]['options'] = $options; // a subscribe sets its terms anew
                    $found = true;
                }
            }
            if (!$found) {
                $this->subscriptions[] = ['pattern' => $pattern, 'options' => $options];
            }
        }
        $this->pruneTracks();
    }

    private function removeSubscriptions(array $patterns, bool $prune = true): void
    {
        $this->subscriptions = array_values(array_filter(
            $this->subscriptions,
            fn (array $s) => !in_array($s['pattern'], $patterns, true),
        ));
        if ($prune) {
            $this->pruneTracks();
        }
    }

    /** Forgets tracks no subscription (or waiting retry) covers, and bases no delta one covers. */
    private function pruneTracks(): void
    {
        $retried = [];
        foreach ($this->retries as $r) {
            array_push($retried, ...$r['topics']);
        }
        foreach ($this->pending as $p) {
            if ($p['kind'] === 'retry') {
                array_push($retried, ...$p['topics']);
            }
        }
        foreach (array_keys($this->tracks) as $topic) {
            $topic = (string) $topic;
            if (!$this->covers($topic) && !self::matchesAny($retried, $topic)) {
                unset($this->tracks[$topic]);
            }
        }
        foreach (array_keys($this->bases) as $topic) {
            if (!$this->deltaFor((string) $topic)) {
                unset($this->bases[$topic]);
            }
        }
    }

    private function covers(string $topic): bool
    {
        foreach ($this->subscriptions as $s) {
            if (self::matches($s['pattern'], $topic)) {
                return true;
            }
        }
        return false;
    }

    private function deltaFor(string $topic): bool
    {
        foreach ($this->subscriptions as $s) {
            if (isset($s['options']['delta']) && self::matches($s['pattern'], $topic)) {
                return true;
            }
        }
        return false;
    }

    private static function matchesAny(array $patterns, string $topic): bool
    {
        foreach ($patterns as $p) {
            if (self::matches($p, $topic)) {
                return true;
            }
        }
        return false;
    }

    /** NATS-style matching (docs/protocol.md §3): `*` one token, `>` one or more at the end. */
    public static function matches(string $pattern, string $topic): bool
    {
        if ($pattern === $topic) {
            return true;
        }
        $p = explode('.', $pattern);
        $t = explode('.', $topic);
        $n = count($p);
        foreach ($p as $i => $token) {
            if ($token === '>') {
                return $i === $n - 1 && count($t) > $i;
            }
            if (!isset($t[$i]) || ($token !== '*' && $token !== $t[$i])) {
                return false;
            }
        }
        return count($t) === $n;
    }

    private function emit(string $event, mixed ...$args): void
    {
        $f = $this->on[$event];
        if ($f === null) {
            return;
        }
        try {
            $f(...$args);
        } catch (\Throwable $e) {
            // An application callback that throws must not take the connection's state with it.
            if ($event !== 'error' && $this->on['error'] !== null) {
                ($this->on['error'])($e);
            } else {
                throw $e;
            }
        }
    }

    private function emitError(\Throwable $e): void
    {
        if ($this->on['error'] !== null) {
            $this->emit('error', $e);
        }
    }
}
