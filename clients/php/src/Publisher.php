<?php

declare(strict_types=1);

namespace Tickwire;

use Tickwire\Exception\ConnectionException;
use Tickwire\Exception\ServerException;

/**
 * Synchronous HTTP publisher for request/response PHP (a Laravel controller, a Symfony command,
 * a WordPress hook): `POST /api/v1/publish` through the curl extension, one keep-alive handle.
 *
 * Every publish (single or batch) carries a random `Idempotency-Key` (128 bits, hex), and only
 * what may have failed before the server published is retried, with the same key: a connection
 * failure, a timeout, a 503. The server publishes such a request once however many attempts
 * reached it (docs/protocol.md §10.3), and a retry gets the first attempt's seqs. Every other
 * refusal (400, 401, 403, 409, 413) is final and thrown at once as a {@see ServerException}
 * carrying the server's error `code` and the HTTP status.
 */
final class Publisher
{
    /** @var \CurlHandle|null */
    private $curl = null;
    private string $endpoint;
    private array $options;

    /**
     * @param string $baseUrl `http(s)://host:port` of the server
     * Options: `api_key` (string, or a callable returning one: an API key or a JWT),
     * `timeout` (seconds per attempt, default 5), `connect_timeout` (default 2), `attempts`
     * (default 3), `backoff` (seconds before the first retry, doubled each time, default 0.1),
     * `tls` (curl options, e.g. [CURLOPT_CAINFO => '/path/ca.pem']).
     */
    public function __construct(string $baseUrl, array $options = [])
    {
        if (!extension_loaded('curl')) {
            throw new \LogicException('Tickwire\Publisher needs the curl extension (Debian: php-curl)');
        }
        $this->endpoint = rtrim($baseUrl, '/') . '/api/v1/publish';
        $this->options = $options + [
            'api_key' => null,
            'timeout' => 5.0,
            'connect_timeout' => 2.0,
            'attempts' => 3,
            'backoff' => 0.1,
            'tls' => [],
        ];
    }

    /** Publishes one message; `$data` is JSON-encoded. */
    public function publish(string $topic, mixed $data): Published
    {
        $body = $this->encode(['topic' => $topic, 'data' => $data]);
        $reply = $this->post($body);
        return new Published((string) $reply['topic'], (int) $reply['seq']);
    }

    /**
     * Publishes a batch, all or nothing, in order.
     *
     * @param list<array{topic: string, data: mixed}> $messages
     * @return list<Published>
     */
    public function publishBatch(array $messages): array
    {
        $list = [];
        foreach ($messages as $m) {
            $list[] = ['topic' => $m['topic'], 'data' => $m['data']];
        }
        $reply = $this->post($this->encode(['messages' => $list]));
        return array_map(fn (array $r) => new Published((string) $r['topic'], (int) $r['seq']), $reply['results']);
    }

    private function encode(array $body): string
    {
        return json_encode($body, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION | JSON_THROW_ON_ERROR);
    }

    private function post(string $body): array
    {
        $key = bin2hex(random_bytes(16));
        $wait = (float) $this->options['backoff'];
        for ($attempt = 1; ; $attempt++) {
            try {
                return $this->postOnce($body, $key);
            } catch (ConnectionException | ServerException $e) {
                $retriable = $e instanceof ConnectionException || $e->status === 503;
                if (!$retriable || $attempt >= $this->options['attempts']) {
                    throw $e;
                }
                usleep((int) ($wait * (0.5 + mt_rand() / mt_getrandmax() / 2) * 1e6));
                $wait = min(2.0, $wait * 2);
            }
        }
    }

    private function postOnce(string $body, string $key): array
    {
        $this->curl ??= curl_init();
        $curl = $this->curl;
        $headers = ['Content-Type: application/json', 'Idempotency-Key: ' . $key, 'Expect:'];
        $apiKey = $this->options['api_key'];
        if (is_callable($apiKey)) {
            $apiKey = $apiKey();
        }
        if ($apiKey !== null) {
            $headers[] = 'Authorization: Bearer ' . $apiKey;
        }
        curl_reset($curl);
        curl_setopt_array($curl, $this->options['tls'] + [
            CURLOPT_URL => $this->endpoint,
            CURLOPT_POST => true,
            CURLOPT_POSTFIELDS => $body,
            CURLOPT_HTTPHEADER => $headers,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT_MS => (int) ($this->options['timeout'] * 1000),
            CURLOPT_CONNECTTIMEOUT_MS => (int) ($this->options['connect_timeout'] * 1000),
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_PROTOCOLS => CURLPROTO_HTTP | CURLPROTO_HTTPS,
        ]);
        $response = curl_exec($curl);
        if ($response === false) {
            throw new ConnectionException("publish to {$this->endpoint} failed: " . curl_error($curl));
        }
        $status = curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
        $json = json_decode((string) $response, true);
        if ($status >= 200 && $status < 300 && is_array($json)) {
            return $json;
        }
        if (is_array($json) && isset($json['error']['code'])) {
            throw new ServerException((string) $json['error']['code'], (string) ($json['error']['message'] ?? ''), $status);
        }
        throw new ServerException('http_' . $status, 'unexpected response: ' . substr((string) $response, 0, 200), $status);
    }
}
