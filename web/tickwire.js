// tickwire.js: browser client for the tickwire push server, over WebSocket or Server-Sent Events.
//
// An ES module without dependencies or a build step. It mirrors the Rust client
// (client/src): reconnect with exponential backoff and full jitter, re-subscribe with `since`
// (the last seq and epoch per topic), a `reset` event when the server cannot recover a topic
// (its fresh snapshot follows), and duplicate updates (seq <= last seen) are dropped. A subscribe
// refused with a transient error (`unavailable`: a cluster node without Redis; `rate_limited`)
// is retried with backoff and reported as `subscription` events. A connection refused for its
// token (HTTP 401) is not retried with the same token. Subscribe options (`maxRate`, `delta`)
// are kept per subscription and sent again on every re-subscribe; Fossil deltas are applied
// here, so the application always gets full `data`. `transport: "sse"` carries the same
// requests over `EventSource` and HTTP (see SseSocket below); `"auto"` (the default) falls back
// to it when WebSocket fails to open twice in a row, and tries WebSocket again later.
// Presence: `presence(topic)` and `presenceEvents` subscriptions with `join`/`leave` events.
// See docs/web.md and docs/protocol.md §4.1, §4.5, §4.7.

/** @typedef {{type: 'update'|'snapshot', topic: string, seq: number, ts: number, data: *}} Update
 *  `ts`: milliseconds since the Unix epoch (server clock); `data`: the payload, always whole */

/**
 * @typedef {Object} Backoff
 * @property {number} [initial=500]  first delay cap, ms
 * @property {number} [max=15000]    largest delay cap, ms
 * @property {number} [factor=2]     growth of the cap per failed attempt
 * @property {number} [maxAttempts=Infinity]  consecutive failed attempts before giving up
 */

/**
 * @typedef {Object} ClientOptions
 * @property {boolean} [reconnect=true]  reconnect when the connection drops
 * @property {Backoff} [backoff]
 * @property {number} [requestTimeout=10000]  ms a request may wait for its reply (incl. while disconnected)
 * @property {string|(() => (string|Promise<string>))} [token]  appended as `?token=` on every (re)connect
 * @property {boolean} [authCheck=true]  after a connection that never opened, ask the server
 *   (a plain GET of the same URL) whether the token was refused
 * @property {(e: Event) => void} [onOpen]
 * @property {(u: Update) => void} [onMessage]
 * @property {(topic: string) => void} [onReset]
 * @property {(code: number, reason: string) => void} [onClose]
 * @property {(err: Error) => void} [onError]
 * @property {(topics: string[], state: 'retrying'|'subscribed'|'failed', info: SubscriptionInfo) => void} [onSubscription]
 * @property {(topic: string, member: Member) => void} [onJoin]  a member joined a topic subscribed with `presenceEvents`
 * @property {(topic: string, member: Member) => void} [onLeave]  a member left it
 * @property {Backoff|false} [subscribeRetry]  backoff between retries of a subscribe refused with
 *   `unavailable` or `rate_limited` (default 500 ms growing x2 up to 30 s, full jitter); false: never retry
 * @property {typeof WebSocket} [WebSocket]  WebSocket implementation (default: globalThis.WebSocket)
 * @property {'auto'|'websocket'|'sse'} [transport='auto']  `sse`: EventSource on `/sse` and HTTP
 *   publishing; `auto`: WebSocket, SSE after two WebSocket connections in a row that never opened
 * @property {number} [wsRetryInterval=60000]  auto, on SSE: ms between attempts to go back to WebSocket
 * @property {number} [wsOpenTimeout=10000]  auto: ms a WebSocket may take to open before it counts as failed
 * @property {string} [sseUrl]  the SSE endpoint (default: the WebSocket URL with `/ws` → `/sse`, http(s))
 * @property {string} [publishUrl]  the HTTP publish endpoint (default: `/api/v1/publish` beside it)
 * @property {typeof EventSource} [EventSource]  EventSource implementation (default: globalThis.EventSource)
 */

/** What a subscription asks of the server (docs/protocol.md §4.1).
 * @typedef {Object} SubscribeOptions
 * @property {number} [maxRate]  at most this many updates a second per topic (0.01 to 1000); the newest always arrives
 * @property {boolean} [delta]  updates may come as Fossil deltas of the previous data (applied here: `data` is always whole)
 * @property {boolean} [presenceEvents]  `join` and `leave` events for the topic's members (docs/presence.md)
 */

/** A member of a topic under the server's `presence.patterns`: a connection with an exact
 * subscription to it (docs/presence.md).
 * @typedef {{client: string, user: string, info: *}} Member
 *  `client`: the connection's id; `user`: the token's `sub`, or "anonymous"; `info`: the
 *  token's `info` claim, or null. Nothing in it comes from the client itself.
 */

/** The answer to `presence(topic)`.
 * @typedef {{topic: string, members: Member[], count: number}} Presence
 *  `members`: at most `presence.max_members` (default 1,000); `count`: exact, cluster-wide
 */

/**
 * What a `subscription` event tells (its `detail`, and the third argument of `onSubscription`).
 * @typedef {Object} SubscriptionInfo
 * @property {string[]} topics  the subscriptions of the refused request, as requested
 * @property {'retrying'|'subscribed'|'failed'} state
 * @property {TickwireError} [error]  the refusal (retrying, failed)
 * @property {number} [attempt]  retrying: the number of the coming retry (1 after the first refusal)
 * @property {number} [delay]    retrying: ms until that retry
 * @property {number} [retryAt]  retrying: Date.now() of that retry
 */

/** Refusals that mean "not now" rather than "no": the same subscribe may succeed later. */
const TRANSIENT = new Set(['unavailable', 'rate_limited']);

/** An `error` reply from the server. */
export class TickwireError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = 'TickwireError';
    /** @type {string} the server's error code (`forbidden`, `invalid_topic`, ..., or `disconnected`, `timeout`, `closed`, `delta`) */
    this.code = code;
    /** @type {string} the message alone, without the code */ this.reason = message;
  }
}

/** NATS-style match of a subscription pattern (`*` one token, `>` one or more) against a topic.
 * @param {string} pattern @param {string} topic @returns {boolean} */
export function patternMatches(pattern, topic) {
  const p = pattern.split('.');
  const t = topic.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== '*' && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

/** Connections shorter than this do not reset the backoff. */
const STABLE_MS = 5000;

/**
 * A tickwire connection that reconnects by itself.
 *
 * Events (EventTarget): `open`, `message` (detail: Update), `reset` (detail: {topic}),
 * `close` (detail: {code, reason}), `error` (detail: Error), `status` (detail: status string),
 * `subscription` (detail: SubscriptionInfo) for subscriptions the client retries on its own,
 * `transport` (detail: 'websocket'|'sse') when a connection opens over another transport,
 * `join` and `leave` (detail: {topic, member}) for subscriptions made with `presenceEvents`.
 */
export class TickwireClient extends EventTarget {
  /**
   * @param {string} url  e.g. `ws://127.0.0.1:8080/ws`; a path like `/ws` is resolved against the page
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    if (typeof location !== 'undefined' && !/^wss?:/.test(url)) {
      const u = new URL(url, location.href);
      u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
      url = u.toString();
    }
    /** @readonly */ this.url = url;
    this.options = options;
    /** @type {Required<Backoff>} */
    this.backoff = { initial: 500, max: 15000, factor: 2, maxAttempts: Infinity, ...(options.backoff || {}) };
    /** @type {'connecting'|'open'|'reconnecting'|'closed'} */ this.status = 'connecting';
    /** @type {WebSocket|null} */ this.ws = null;
    this._nextId = 1;
    // A request: {frame, kind, opts?, resolve, reject, timer, since?: Set<string>, ...}.
    /** @type {Map<number, Object>} requests sent, by id */ this._pending = new Map();
    /** @type {Array<Object>} requests waiting for a connection */ this._queue = [];
    /** @type {Map<string, Object>} confirmed subscriptions (patterns) -> wire options {max_rate, delta} */
    this.subscriptions = new Map();
    /** @type {Map<string, {seq: number, epoch: string|null}>} per topic: last delivered seq, epoch */
    this.positions = new Map();
    /** @type {Map<string, {seq: number, text: string}>} per topic of a delta subscription: last data (JSON text) */
    this._bases = new Map();
    /** @type {Set<string>} topics re-subscribed for full data after a delta that did not apply */
    this._resyncing = new Set();
    this.deltaFrames = 0; // delta updates applied (for tests and the curious)
    /** @type {Set<{topics: string[], opts: Object, attempt: number, timer: any}>} refused subscribes waiting for a retry */
    this._retries = new Set();
    this._attempt = 0; this._closed = false; this._timer = null; this._openedAt = 0;
    /** @type {TickwireError|null} why the server refused the last connection (401), if it did */ this.refusal = null;
    const transport = options.transport || 'auto';
    if (!['auto', 'websocket', 'sse'].includes(transport)) throw new TypeError(`transport must be "auto", "websocket" or "sse", not ${JSON.stringify(transport)}`);
    /** @readonly @type {'auto'|'websocket'|'sse'} */ this.transportOption = transport;
    /** @type {'websocket'|'sse'|null} the transport of the current (or last) connection */ this.transport = null;
    this._wsFailures = 0; // WebSocket connections in a row that never opened (auto)
    this._probe = null; // auto, on SSE: the timer of the next WebSocket attempt
    /** @type {Map<string, string>} SSE: the last event id of each stream, by subscribe options */
    this._sseIds = new Map();
    this._connect();
  }

  /** @param {string} name @param {*} detail */
  _emit(name, detail, ...args) {
    const cb = this.options['on' + name[0].toUpperCase() + name.slice(1)];
    try { if (cb) cb(...args); } catch (e) { setTimeout(() => { throw e; }); }
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  _setStatus(s) {
    if (this.status !== s) this.dispatchEvent(new CustomEvent('status', { detail: (this.status = s) }));
  }

  async _connect() {
    if (this._closed) return;
    this._setStatus(this._attempt === 0 && !this._openedAt ? 'connecting' : 'reconnecting');
    let url = this.url;
    const failed = (e) => { this._emit('error', e, e); this._scheduleReconnect(); };
    let token;
    try { token = await this._token(); } catch (e) { return failed(e); }
    if (token) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    if (this._closed) return;
    const sse = this.transportOption === 'sse' || (this.transportOption === 'auto' && this._wsFailures >= 2);
    let ws, openTimer = null;
    try {
      if (sse) ws = new SseSocket(this, token);
      else ws = new (this.options.WebSocket || globalThis.WebSocket)(url);
    } catch (e) { return failed(e); }
    this.ws = ws;
    let opened = false;
    if (!sse && this.transportOption === 'auto') {
      // A proxy that swallows the upgrade may neither answer nor close.
      openTimer = setTimeout(() => { if (!opened && ws.readyState === 0) ws.close(); }, this.options.wsOpenTimeout ?? 10000);
    }
    ws.onopen = (ev) => {
      opened = true;
      clearTimeout(openTimer);
      this.refusal = null;
      this._openedAt = Date.now();
      const transport = sse ? 'sse' : 'websocket';
      if (!sse) this._wsFailures = 0;
      else if (this.transportOption === 'auto') this._scheduleProbe();
      if (this.transport !== transport) this._emit('transport', (this.transport = transport), transport);
      this._setStatus('open');
      this._resubscribe();
      for (const req of this._queue.splice(0)) this._send(req);
      // A new connection may reach a node that can serve them: retry now.
      for (const retry of [...this._retries]) this._sendRetry(retry);
      this._emit('open', null, ev);
    };
    ws.onmessage = (ev) => this._onFrame(ev.data);
    ws.onerror = () => { const err = new Error(`WebSocket error on ${this.url}`); this._emit('error', err, err); };
    ws.onclose = async (ev) => {
      clearTimeout(openTimer);
      if (this.ws !== ws) return;
      this.ws = null;
      this._connectionLost();
      this._emit('close', { code: ev.code, reason: ev.reason }, ev.code, ev.reason);
      const refusal = sse ? ws.refusal : opened || this._closed ? null : await this._whyRefused(url);
      // Auto: a WebSocket that failed while the server answers HTTP counts towards SSE; a
      // server that is down (or restarting) does not.
      if (!sse && !opened && !refusal && !this._closed && this.transportOption === 'auto'
        && await this._reachable(url)) this._wsFailures++;
      if (refusal) {
        this.refusal = refusal;
        this._emit('error', refusal, refusal);
        // The same token would be refused again; only a token function may bring a new one.
        if (typeof this.options.token !== 'function') return this._finish();
      }
      if (!this._closed && this.options.reconnect !== false && ev.code !== 4029) {
        if (this._openedAt && Date.now() - this._openedAt >= STABLE_MS) this._attempt = 0;
        this._scheduleReconnect();
      } else this._finish();
    };
  }

  /**
   * A page cannot read why its upgrade failed (close 1006 either way), so this asks the server
   * with a plain GET of the same URL: 401 means the token was refused (docs/protocol.md §2.1).
   * Resolves with that refusal, or null (server down, another answer, a cross-origin URL).
   * @param {string} url @returns {Promise<TickwireError|null>}
   */
  async _whyRefused(url) {
    if (this.options.authCheck === false || typeof fetch !== 'function') return null;
    try {
      const r = await fetch(url.replace(/^ws/, 'http'), { cache: 'no-store' });
      if (r.status !== 401) return null;
      const { error = {} } = await r.json().catch(() => ({}));
      return new TickwireError(error.code || 'unauthorized', error.message || 'authentication required');
    } catch { return null; }
  }

  /** Whether the server of `url` answers plain HTTP at all (an opaque `no-cors` answer will
   * do, so this works across origins): resolves false when the request fails or takes 5 s. */
  async _reachable(url) {
    if (typeof fetch !== 'function') return true;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 5000);
    try {
      await fetch(url.replace(/^ws/, 'http'), { mode: 'no-cors', cache: 'no-store', signal: abort.signal });
      return true;
    } catch { return false; } finally { clearTimeout(timer); }
  }

  /** The token for the next connection: the `token` option, or what its function returns. */
  async _token() {
    const tok = this.options.token;
    return typeof tok === 'function' ? await tok() : tok;
  }

  /** An HTTP URL on the server of `this.url`: `path` in place of its last segment (`/ws`), or
   * the `sseUrl`/`publishUrl` option. @param {string} path  `/sse`, `/api/v1/publish`, `/api/v1/topics/…` */
  _httpUrl(path) {
    const given = path === '/sse' ? this.options.sseUrl : path === '/api/v1/publish' ? this.options.publishUrl : null;
    const base = typeof location !== 'undefined' ? location.href : undefined;
    if (given) return new URL(given, base).toString();
    const u = new URL(this.url, base);
    u.protocol = u.protocol === 'wss:' ? 'https:' : u.protocol === 'ws:' ? 'http:' : u.protocol;
    u.pathname = u.pathname.replace(/\/[^/]*$/, '') + path;
    u.search = '';
    return u.toString();
  }

  /**
   * Why a stream closed before its first event: `EventSource` hides the status, so this asks
   * with a `fetch` of the same URL (aborted once the head is in). Resolves with the server's
   * refusal (401, 403, 400, 429, 503: its error body), or null (it would stream now, the server
   * is down, another answer, or no answer within the open timeout).
   * @param {string} url @returns {Promise<TickwireError|null>}
   */
  async _whyStreamRefused(url) {
    if (typeof fetch !== 'function') return null;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), SSE_OPEN_TIMEOUT);
    try {
      const r = await fetch(url, { cache: 'no-store', signal: abort.signal });
      if (r.ok || r.status < 400) return null;
      const { error } = await r.json().catch(() => ({}));
      return error && error.code ? new TickwireError(error.code, error.message || `HTTP ${r.status}`) : null;
    } catch { return null; } finally { clearTimeout(timer); abort.abort(); }
  }

  /** Auto, on SSE: tries WebSocket again after `wsRetryInterval`; when one opens, the client
   * reconnects over WebSocket (its re-subscription recovers with `since`). */
  _scheduleProbe() {
    clearTimeout(this._probe);
    this._probe = setTimeout(async () => {
      this._probe = null;
      if (this._closed || this.transport !== 'sse' || !this.ws) return;
      let url = this.url;
      try {
        const token = await this._token();
        if (token) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
      } catch { return this._scheduleProbe(); }
      let probe;
      try { probe = new (this.options.WebSocket || globalThis.WebSocket)(url); } catch { return this._scheduleProbe(); }
      const giveUp = setTimeout(() => probe.close(), this.options.wsOpenTimeout ?? 10000);
      probe.onopen = () => {
        clearTimeout(giveUp);
        probe.onclose = null;
        probe.close(1000, 'probe');
        if (this._closed || this.transport !== 'sse' || !this.ws) return;
        this._wsFailures = 0;
        this._attempt = 0;
        this.ws.close(1000, 'back to WebSocket');
      };
      probe.onclose = () => { clearTimeout(giveUp); this._scheduleProbe(); };
    }, this.options.wsRetryInterval ?? 60000);
  }

  _scheduleReconnect() {
    if (this._closed) return;
    if (this.options.reconnect === false || this._attempt >= this.backoff.maxAttempts) return this._finish();
    const b = this.backoff;
    const cap = Math.min(b.max, b.initial * Math.pow(b.factor, this._attempt));
    const delay = Math.random() * cap; // full jitter
    this._attempt++;
    this._setStatus('reconnecting');
    this._timer = setTimeout(() => this._connect(), delay);
  }

  _finish() {
    this._closed = true;
    clearTimeout(this._probe);
    this._stopRetries();
    this._setStatus('closed');
    for (const r of this._queue.splice(0)) this._fail(r, new TickwireError('closed', 'client is closed'));
  }

  /** Pending publishes fail (they may or may not have happened); (un)subscribes are sent again. */
  _connectionLost() {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const r of pending) {
      if (r.kind === 'publish') this._fail(r, new TickwireError('disconnected', 'connection lost'));
      else if (r.kind === 'retry') {
        if (r.topics.length) this._retries.add({ topics: r.topics, opts: r.opts, attempt: r.attempt, timer: null });
      } else if (r.kind !== 'resubscribe' && r.kind !== 'resync') this._queue.push(r);
    }
    this._resyncing.clear(); // the next connection's re-subscription asks with `since` anyway
  }

  _fail(r, err) { clearTimeout(r.timer); r.reject(err); }

  _send(r) {
    if (r.kind === 'unsubscribe') this._cancelRetries(r.frame.topics);
    r.frame.id = this._nextId++;
    this._pending.set(r.frame.id, r);
    this.ws.send(JSON.stringify(r.frame));
  }

  /** Sends a retry (once its timer fired, or at once on a new connection), asking to recover
   * the tracked topics only its patterns cover (left by a refused re-subscription). */
  _sendRetry(retry) {
    clearTimeout(retry.timer);
    this._retries.delete(retry);
    /** @type {Record<string, {seq: number, epoch: string}>} */
    const since = {};
    for (const [t, pos] of this.positions) {
      if (!retry.topics.some((p) => patternMatches(p, t))) continue;
      if ([...this.subscriptions.keys()].some((p) => patternMatches(p, t))) continue;
      since[t] = { seq: pos.seq, epoch: pos.epoch || '' };
    }
    const frame = { op: 'subscribe', topics: retry.topics, ...retry.opts };
    if (Object.keys(since).length) frame.since = since;
    const { topics, opts, attempt } = retry;
    this._send({ frame, kind: 'retry', topics, opts, attempt, since: new Set(Object.keys(since)), resolve() {}, reject() {}, timer: null });
  }

  /**
   * A subscribe nobody else sends again was refused: schedules a retry when the refusal is
   * transient and retries remain (`done` refused so far). Returns the SubscriptionInfo.
   * @param {string[]} topics @param {Object} opts @param {number} done @param {TickwireError} error
   */
  _refused(topics, opts, done, error) {
    const policy = this.options.subscribeRetry;
    const b = { initial: 500, max: 30000, factor: 2, maxAttempts: Infinity, ...(policy || {}) };
    if (policy === false || !TRANSIENT.has(error.code) || done >= b.maxAttempts) {
      return { topics, state: 'failed', error };
    }
    const cap = Math.min(b.max, b.initial * Math.pow(Math.max(1, b.factor), done));
    const delay = Math.random() * cap; // full jitter
    const attempt = done + 1;
    // A topic already active or already waiting needs no second retry.
    const waiting = topics.filter((t) => !this.subscriptions.has(t)
      && ![...this._retries].some((r) => r.topics.includes(t)));
    if (waiting.length && !this._closed) {
      const retry = { topics: waiting, opts, attempt, timer: null };
      retry.timer = setTimeout(() => {
        retry.timer = null;
        if (this.ws && this.ws.readyState === 1) this._sendRetry(retry);
        // otherwise it waits in _retries and goes out when the connection opens
      }, delay);
      this._retries.add(retry);
    }
    return { topics, state: 'retrying', error, attempt, delay, retryAt: Date.now() + delay };
  }

  /** Takes `topics` out of the waiting retries (accepted meanwhile, or unsubscribed). */
  _unretry(topics) {
    for (const retry of [...this._retries]) {
      retry.topics = retry.topics.filter((t) => !topics.includes(t));
      if (retry.topics.length === 0) { clearTimeout(retry.timer); this._retries.delete(retry); }
    }
  }

  /** An unsubscribe stops the retries of its topics, waiting or in flight. */
  _cancelRetries(topics) {
    this._unretry(topics);
    for (const r of this._pending.values()) {
      if (r.kind === 'retry') r.topics = r.topics.filter((t) => !topics.includes(t));
      else if (r.kind === 'subscribe') (r.cancelled ||= []).push(...topics);
    }
  }

  _stopRetries() {
    for (const retry of this._retries) clearTimeout(retry.timer);
    this._retries.clear();
  }

  _subscriptionState(info) { this._emit('subscription', info, info.topics, info.state, info); }

  /** Forgets the positions of topics no subscription, waiting retry or retry in flight covers,
   * and the bases of topics no such one asking for deltas covers. */
  _pruneTracks() {
    const wanted = [...this.subscriptions];
    for (const r of this._retries) wanted.push(...r.topics.map((t) => [t, r.opts]));
    for (const r of this._pending.values()) if (r.kind === 'retry') wanted.push(...r.topics.map((t) => [t, r.opts]));
    const covered = (t, delta) => wanted.some(([p, o]) => (!delta || o.delta) && patternMatches(p, t));
    for (const t of [...this.positions.keys()]) if (!covered(t, false)) this.positions.delete(t);
    for (const t of [...this._bases.keys()]) if (!covered(t, true)) this._bases.delete(t);
  }

  /** Re-establishes the confirmed subscriptions with `since` = the tracked positions: one
   * request per set of options, each topic's `since` in the first request that matches it. */
  _resubscribe() {
    this._pruneTracks();
    const groups = new Map();
    for (const [p, o] of this.subscriptions) {
      const key = JSON.stringify(o);
      groups.set(key, [...(groups.get(key) || []), p]);
    }
    const assigned = new Set();
    for (const [key, topics] of groups) {
      /** @type {Record<string, {seq: number, epoch: string}>} */
      const since = {};
      for (const [t, pos] of this.positions) {
        if (assigned.has(t) || !topics.some((p) => patternMatches(p, t))) continue;
        assigned.add(t);
        since[t] = { seq: pos.seq, epoch: pos.epoch || '' };
      }
      const opts = JSON.parse(key);
      const frame = { op: 'subscribe', topics, ...opts };
      if (Object.keys(since).length) frame.since = since;
      this._send({ frame, kind: 'resubscribe', opts, since: new Set(Object.keys(since)), resolve() {}, reject() {}, timer: null });
    }
  }

  /** After a delta that did not apply: sends the subscription matching `topic` again, with
   * `since` its last delivered position, so that the server replays it (or resets it) in full. */
  _resync(topic, seq) {
    const subs = [...this.subscriptions].filter(([p]) => patternMatches(p, topic));
    const [pattern, opts] = subs.find(([, o]) => o.delta) || subs[0] || [];
    if (!pattern) return;
    this._resyncing.add(topic);
    const track = this.positions.get(topic);
    const since = { [topic]: { seq: Math.min(track ? track.seq : Infinity, seq - 1), epoch: (track && track.epoch) || '' } };
    const frame = { op: 'subscribe', topics: [pattern], since, ...opts };
    this._send({ frame, kind: 'resync', topic, since: new Set([topic]), resolve() {}, reject() {}, timer: null });
  }

  /** Keeps the data of update `msg` (frame `text`) as the base of its topic's next delta when
   * a delta subscription matches the topic; an older seq (a replay) does not move it back.
   * `data` is the frame's last member, so its exact text is the rest of the frame (§4.1). */
  _keepBase(msg, text, reset) {
    const base = this._bases.get(msg.topic);
    const wanted = base || [...this.subscriptions].some(([p, o]) => o.delta && patternMatches(p, msg.topic));
    if (!wanted || (base && msg.seq <= base.seq && !reset)) return;
    this._bases.set(msg.topic, { seq: msg.seq, text: text.slice(text.indexOf('"data":') + 7, -1) });
  }

  /** Applies a `subscribed` reply's positions (see client/src/connection.rs apply_positions). */
  _applyPositions(msg, since) {
    const positions = msg.positions || {};
    const recovered = msg.recovered || {};
    const resets = [];
    const fresh = (p) => ({ seq: Math.max(0, p.seq - 1), epoch: p.epoch });
    for (const [topic, p] of Object.entries(positions)) {
      const track = this.positions.get(topic);
      const reset = () => { resets.push(topic); this.positions.set(topic, fresh(p)); };
      if (since.has(topic)) {
        if (recovered[topic] !== true) reset();
        else if (track) track.epoch = p.epoch;
      } else if (!track) this.positions.set(topic, fresh(p));
      else if (track.epoch === p.epoch) { /* same stream */ }
      else if (track.epoch == null) track.epoch = p.epoch;
      else reset(); // another stream than the one delivered so far
    }
    for (const topic of since) {
      if (!(topic in positions)) {
        const track = this.positions.get(topic);
        this.positions.delete(topic);
        this._bases.delete(topic);
        if (track && track.seq > 0) resets.push(topic);
      }
    }
    for (const topic of resets) {
      this._bases.delete(topic); // another stream: its deltas do not apply to this one's data
      this._emit('reset', { topic }, topic);
    }
  }

  _onFrame(text) {
    let msg;
    try { msg = JSON.parse(text); } catch (e) { return this._emit('error', e, e); }
    if (msg.type === 'update' || msg.type === 'snapshot') {
      const reset = msg.type === 'snapshot' && typeof msg.epoch === 'string';
      if (typeof msg.delta === 'string') {
        // A stream re-opened from its last id may repeat an update the client has (the id
        // precedes it): data at one seq is the same whatever carried it, so the base stands.
        const had = this.transport === 'sse' && this.positions.get(msg.topic);
        if (had && msg.seq <= had.seq) return;
        if (!this._applyDelta(msg)) return;
      } else this._keepBase(msg, text, reset); // before the duplicate check: the server bases on what it sent
      if (reset) {
        // A reset outside any subscribe reply: the topic's stream restarted (a cluster's broker
        // lost it), possibly at a lower seq. Track it from here.
        this.positions.set(msg.topic, { seq: msg.seq, epoch: msg.epoch });
        this._emit('reset', { topic: msg.topic }, msg.topic);
        this._emit('message', msg, msg);
        return;
      }
      const track = this.positions.get(msg.topic);
      if (track && msg.seq <= track.seq) return; // duplicate
      if (track) track.seq = msg.seq;
      else this.positions.set(msg.topic, { seq: msg.seq, epoch: null });
      this._emit('message', msg, msg);
      return;
    }
    if (msg.type === 'join' || msg.type === 'leave') {
      // In order with the topic's updates, as the server sent them; no list is kept here.
      return this._emit(msg.type, { topic: msg.topic, member: msg.member }, msg.topic, msg.member);
    }
    const r = msg.id != null ? this._pending.get(msg.id) : undefined;
    const err = msg.type === 'error' ? new TickwireError(msg.code, msg.message) : null;
    if (!r) {
      if (err) this._emit('error', err, err);
      return;
    }
    this._pending.delete(msg.id);
    clearTimeout(r.timer);
    if (err) {
      if (r.kind === 'subscribe') {
        const wanted = r.frame.topics.filter((t) => !(r.cancelled || []).includes(t));
        const info = this._refused(wanted, r.opts, 0, err);
        r.reject(err);
        // A refusal for good is the caller's to handle; a retry is news.
        if (info.state === 'retrying' && wanted.length) this._subscriptionState({ ...info, topics: r.frame.topics });
      } else if (r.kind === 'resubscribe' || (r.kind === 'retry' && r.topics.length)) {
        // Nobody awaits these: the server refuses what it accepted before (or still refuses).
        const topics = r.kind === 'retry' ? r.topics : r.frame.topics;
        for (const t of topics) this.subscriptions.delete(t);
        const info = this._refused(topics, r.opts, r.kind === 'retry' ? r.attempt : 0, err);
        this._pruneTracks();
        this._subscriptionState(info);
        if (info.state === 'failed') this._emit('error', err, err);
      } else if (r.kind === 'resync') {
        // The subscription stands (a refused subscribe changes nothing); the next delta asks again.
        this._resyncing.delete(r.topic);
        this._emit('error', err, err);
      } else {
        r.reject(err);
      }
      return;
    }
    if (msg.type === 'subscribed' && r.kind === 'retry') {
      if (r.topics.length === 0) return; // unsubscribed meanwhile: the `unsubscribed` reply follows
      for (const t of r.topics) this.subscriptions.set(t, r.opts);
      this._subscriptionState({ topics: r.topics, state: 'subscribed' });
      this._applyPositions(msg, r.since);
      return;
    }
    if (msg.type === 'subscribed' && r.kind === 'resync') {
      this._resyncing.delete(r.topic);
      this._applyPositions(msg, r.since);
      return;
    }
    if (msg.type === 'subscribed') {
      this._applyPositions(msg, r.since || new Set());
      const opts = r.opts || {};
      const dropped = msg.topics.some((t) => this.subscriptions.get(t)?.delta && !opts.delta);
      for (const t of msg.topics) this.subscriptions.set(t, opts);
      if (dropped) this._pruneTracks(); // bases no delta subscription needs any more
      if (r.kind === 'subscribe') this._unretry(msg.topics); // accepted now: an older refusal needs no retry
    } else if (msg.type === 'unsubscribed') {
      for (const t of msg.topics) this.subscriptions.delete(t);
      this._pruneTracks();
    }
    r.resolve(msg);
  }

  /** Replaces `msg.delta` with the `data` it encodes; false when it does not apply (then the
   * topic is re-subscribed for full data, and an `error` event tells). */
  _applyDelta(msg) {
    const base = this._bases.get(msg.topic);
    try {
      if (!base) throw new Error('no data to apply it to');
      if (base.seq !== msg.seq - 1) throw new Error(`it applies to seq ${msg.seq - 1}, the last data is seq ${base.seq}`);
      const text = fossilApply(base.text, msg.delta);
      msg.data = JSON.parse(text);
      this._bases.set(msg.topic, { seq: msg.seq, text });
    } catch (e) {
      if (this._resyncing.has(msg.topic)) return false; // sent before the server saw the resync
      this._bases.delete(msg.topic);
      this._resync(msg.topic, msg.seq);
      const err = new TickwireError('delta', `update ${msg.seq} of ${msg.topic} not applied (${e.message}); asking for full data again`);
      this._emit('error', err, err);
      return false;
    }
    delete msg.delta;
    this.deltaFrames++;
    return true;
  }

  _request(frame, kind, opts) {
    if (this._closed) return Promise.reject(new TickwireError('closed', 'client is closed'));
    return new Promise((resolve, reject) => {
      const r = { frame, kind, opts, resolve, reject, timer: null };
      const timeout = this.options.requestTimeout ?? 10000;
      r.timer = setTimeout(() => {
        const i = this._queue.indexOf(r);
        if (i >= 0) this._queue.splice(i, 1);
        if (r.frame.id != null) this._pending.delete(r.frame.id);
        reject(new TickwireError('timeout', `no reply within ${timeout} ms`));
      }, timeout);
      if (this.ws && this.ws.readyState === 1) this._send(r);
      else this._queue.push(r);
    });
  }

  /**
   * Subscribes to topics or patterns. Resolves with the `subscribed` reply, rejects with a
   * TickwireError. A refusal with `unavailable` or `rate_limited` is also retried in the
   * background (see `subscribeRetry`), reported by `subscription` events; `unsubscribe` stops it.
   * The options are kept with the subscriptions and sent again with every re-subscribe;
   * subscribing again to a held subscription replaces them. A `maxRate` out of bounds rejects
   * at once with code `bad_request`. `presenceEvents` asks for `join`/`leave` events of the
   * topics' members (exact topics under the server's `presence.patterns`).
   * @param {string|string[]} topics @param {SubscribeOptions} [options] @returns {Promise<Object>}
   */
  subscribe(topics, { maxRate, delta, presenceEvents } = {}) {
    const opts = {};
    if (maxRate != null) {
      if (!(typeof maxRate === 'number' && maxRate >= 0.01 && maxRate <= 1000)) {
        return Promise.reject(new TickwireError('bad_request', 'maxRate must be a number of updates a second from 0.01 to 1000'));
      }
      opts.max_rate = maxRate;
    }
    if (delta) opts.delta = 'fossil';
    if (presenceEvents) opts.presence_events = true;
    return this._request({ op: 'subscribe', topics: [].concat(topics), ...opts }, 'subscribe', opts);
  }

  /** Removes subscriptions by their exact text. Resolves with the `unsubscribed` reply.
   * @param {string|string[]} topics @returns {Promise<Object>} */
  unsubscribe(topics) {
    return this._request({ op: 'unsubscribe', topics: [].concat(topics) }, 'unsubscribe');
  }

  /** Publishes `data` to `topic` (must match the connection's publish ACL: `auth.anonymous.publish` or the token's `publish` claim).
   * Over SSE it is an HTTP POST of /api/v1/publish (the token as bearer; without one, publishing
   * is open only while the server has no API key: docs/protocol.md §10.1).
   * Resolves with the `published` reply ({topic, seq}); rejects with a TickwireError.
   * @param {string} topic @param {*} data @returns {Promise<Object>} */
  publish(topic, data) {
    return this._request({ op: 'publish', topic, data: data === undefined ? null : data }, 'publish');
  }

  /**
   * Who is in `topic`: resolves with the `presence` reply ({topic, members, count}), rejects
   * with a TickwireError (`forbidden` without the right to subscribe to the topic). Members are
   * listed up to the server's `presence.max_members`; `count` is exact. A query in flight when
   * the connection drops is sent again on the next one. To follow the list, subscribe with
   * `presenceEvents` first and apply `join`/`leave` by `member.client`; after a reconnect
   * (`open`), query again: joins and leaves meanwhile are not replayed.
   * @param {string} topic @returns {Promise<Presence>}
   */
  presence(topic) {
    return this._request({ op: 'presence', topic }, 'presence');
  }

  /** Closes the connection for good (code 1000); no reconnect. */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    clearTimeout(this._probe);
    this._stopRetries();
    if (this.ws) this.ws.close(1000, 'client closed');
    else this._finish();
  }
}

// Server-Sent Events: `SseSocket` stands in for a WebSocket (`readyState`, `send`, `close`,
// `onopen`/`onmessage`/`onerror`/`onclose`), so that everything above (requests and replies by
// id, re-subscription with `since`, retries, deltas, resets) serves both transports unchanged.
// A request becomes HTTP: `subscribe`/`unsubscribe` re-open an `EventSource` on
// `/sse?topics=…` (one stream per set of subscribe options, since `max_rate` and `delta` are
// per stream), `publish` is a `fetch` POST of /api/v1/publish. The server's `subscribed` event
// is turned into the reply of the request that opened the stream. A stream re-opened with
// another topic set passes the last event id it got (`last_event_id=`), so its topics continue
// without gap or duplicate. Any stream that drops closes the whole socket, as a WebSocket
// closes, and the client reconnects with backoff: its re-subscription re-opens each stream from
// the last event id kept in `client._sseIds` (docs/protocol.md, Server-Sent Events).

/** How long a stream may take to answer before it counts as failed, ms. */
const SSE_OPEN_TIMEOUT = 10000;

class SseSocket {
  /**
   * @param {TickwireClient} client  for its URLs and `_sseIds` (kept across sockets)
   * @param {string|undefined} token  the token of this connection (query `token=`, publish bearer)
   */
  constructor(client, token) {
    this.client = client;
    this.token = token;
    this.readyState = 0;
    /** @type {TickwireError|null} why the server refused this connection (401), if it did */
    this.refusal = null;
    /** @type {Map<string, {key: string, opts: Object, topics: string[], es: EventSource|null, delivered: Set<string>, marks: Map<string, string>}>} streams by options */
    this.groups = new Map();
    this._ops = Promise.resolve();
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    setTimeout(() => {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      if (this.onopen) this.onopen({ type: 'open' });
    });
  }

  /** @param {string} text  a request frame, as the client writes it to a WebSocket */
  send(text) {
    if (this.readyState !== 1) return;
    const frame = JSON.parse(text);
    if (frame.op === 'publish') return this._publish(frame);
    if (frame.op === 'presence') return this._presence(frame);
    if (frame.op !== 'subscribe' && frame.op !== 'unsubscribe') {
      return this._reply({ type: 'error', id: frame.id, code: 'bad_request', message: `${frame.op} is not available over SSE` });
    }
    // One change of the stream set at a time: each knows the topics the last one left.
    this._ops = this._ops.then(() => (this.readyState === 1
      ? (frame.op === 'subscribe' ? this._subscribe(frame) : this._unsubscribe(frame))
      : undefined));
  }

  close(code = 1000, reason = '') { this._lost(code, reason); }

  _reply(msg) {
    if (this.readyState === 1 && this.onmessage) this.onmessage({ data: JSON.stringify(msg) });
  }

  async _publish(frame) {
    const headers = { 'Content-Type': 'application/json' };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let reply;
    try {
      const r = await fetch(this.client._httpUrl('/api/v1/publish'), {
        method: 'POST', headers, body: JSON.stringify({ topic: frame.topic, data: frame.data }),
      });
      const body = await r.json().catch(() => ({}));
      reply = r.ok
        ? { type: 'published', id: frame.id, topic: body.topic, seq: body.seq }
        : { type: 'error', id: frame.id, code: body.error?.code || 'unavailable', message: body.error?.message || `HTTP ${r.status}` };
    } catch (e) {
      reply = { type: 'error', id: frame.id, code: 'disconnected', message: `publish over HTTP failed: ${e.message}` };
    }
    this._reply(reply);
  }

  /** `presence` over HTTP: `GET /api/v1/topics/{topic}/presence`, the token as bearer (without
   * one it answers only while the server has no API key, as the other topic endpoints). */
  async _presence(frame) {
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const url = this.client._httpUrl(`/api/v1/topics/${encodeURIComponent(frame.topic)}/presence`);
    let reply;
    try {
      const r = await fetch(url, { headers, cache: 'no-store' });
      const body = await r.json().catch(() => ({}));
      reply = r.ok
        ? { type: 'presence', id: frame.id, topic: body.topic ?? frame.topic, members: body.members || [], count: body.count ?? 0 }
        : { type: 'error', id: frame.id, code: body.error?.code || 'unavailable', message: body.error?.message || `HTTP ${r.status}` };
    } catch (e) {
      reply = { type: 'error', id: frame.id, code: 'disconnected', message: `presence over HTTP failed: ${e.message}` };
    }
    this._reply(reply);
  }

  /**
   * A stream carries no `join`/`leave`, but a subscribe with `presence_events` must be refused
   * here as the server refuses it over WebSocket (a pattern, or a topic that is no presence
   * room: `bad_request`), or a subscription accepted over SSE would be refused by the
   * re-subscription after a switch to WebSocket, and lost. The rooms are asked with the
   * presence endpoint; an answer other than 400 (401 with API keys, the server down) refuses
   * nothing, and the stream's own subscribe decides.
   * @param {string[]} topics @returns {Promise<{code: string, message: string}|null>}
   */
  async _presenceRefusal(topics) {
    for (const t of topics) {
      if (t.split('.').some((token) => token === '*' || token === '>')) {
        return { code: 'bad_request', message: `presence_events needs exact topics matching presence.patterns: ${JSON.stringify(t)} is not one` };
      }
      try {
        const r = await fetch(this.client._httpUrl(`/api/v1/topics/${encodeURIComponent(t)}/presence`),
          { headers: this.token ? { Authorization: `Bearer ${this.token}` } : {}, cache: 'no-store' });
        if (r.status === 400) {
          const { error = {} } = await r.json().catch(() => ({}));
          return { code: error.code || 'bad_request', message: error.message || `${t} is not a presence room` };
        }
      } catch { /* the stream's own request will tell */ }
    }
    return null;
  }

  _group(frame) {
    const opts = {};
    if (frame.max_rate != null) opts.max_rate = frame.max_rate;
    if (frame.delta) opts.delta = frame.delta;
    const key = JSON.stringify(opts);
    let g = this.groups.get(key);
    if (!g) this.groups.set(key, (g = { key, opts, topics: [], es: null, delivered: new Set(), marks: new Map() }));
    return g;
  }

  async _subscribe(frame) {
    if (frame.presence_events) {
      const refusal = await this._presenceRefusal(frame.topics);
      if (refusal) return this._reply({ type: 'error', id: frame.id, ...refusal });
    }
    const g = this._group(frame);
    const before = g.topics;
    const since = new Set(Object.keys(frame.since || {}));
    // `since` for a topic this stream delivers now: the client lost one of its updates (a
    // delta that did not apply). The id is past it, so the stream starts over without one:
    // every topic of it is reset and gets its snapshot (full data).
    const restart = g.es != null && [...since].some((t) => before.some((p) => patternMatches(p, t)));
    if (restart) this.client._sseIds.delete(g.key);
    const opened = await this._open(g, [...new Set([...before, ...frame.topics])], since);
    if (!opened) return; // the socket is lost
    if (opened.error) {
      this._reply({ type: 'error', id: frame.id, ...opened.error });
      // A refused subscribe changes nothing: the group's stream goes on from where it was.
      if (before.length && !(await this._open(g, before, new Set()))?.msg) this._lost(1006, 'stream lost');
      else if (!before.length) this.groups.delete(g.key);
      return;
    }
    const { positions = {}, recovered = {} } = opened.msg;
    const reply = { type: 'subscribed', id: frame.id, topics: frame.topics, positions: {} };
    // As over WebSocket: the positions of the topics this request matches, `recovered` for its
    // `since`. A topic the socket tracks itself (see `_open`) is left out: it resets on its own.
    for (const [t, p] of Object.entries(positions)) {
      if (frame.topics.some((pat) => patternMatches(pat, t)) && !g.marks.has(t)) reply.positions[t] = p;
    }
    if (since.size) {
      reply.recovered = {};
      for (const t of since) {
        if (!(t in positions)) continue;
        // A position the client already has at the topic's current one misses nothing, even
        // when the id did not carry the topic (a stream re-opened with it sent no event since):
        // its snapshot, if any, is one the client has.
        const had = frame.since[t];
        const current = had.seq === positions[t].seq && had.epoch === positions[t].epoch;
        reply.recovered[t] = recovered[t] === true || current;
      }
    }
    this._reply(reply);
    // Subscribing again with other options moves a subscription to another stream.
    for (const other of [...this.groups.values()]) {
      if (other === g || !other.topics.some((t) => frame.topics.includes(t))) continue;
      if (!(await this._regroup(other, other.topics.filter((t) => !frame.topics.includes(t))))) return;
    }
  }

  async _unsubscribe(frame) {
    for (const g of [...this.groups.values()]) {
      if (!g.topics.some((t) => frame.topics.includes(t))) continue;
      if (!(await this._regroup(g, g.topics.filter((t) => !frame.topics.includes(t))))) return;
    }
    this._reply({ type: 'unsubscribed', id: frame.id, topics: frame.topics });
  }

  /** Re-opens `g` on `topics` (closes it when none are left); false when the socket is lost. */
  async _regroup(g, topics) {
    if (!topics.length) {
      if (g.es) g.es.close();
      this.groups.delete(g.key);
      this.client._sseIds.delete(g.key); // its positions belong to no stream any more
      return true;
    }
    const opened = await this._open(g, topics, new Set());
    if (opened?.msg) return true;
    this._lost(1006, 'stream lost');
    return false;
  }

  /**
   * Closes `g`'s stream and opens it on `topics` from the last event id. Resolves with
   * `{msg}` (the `subscribed` event's data), `{error: {code, message}}` when the server refused
   * (403, 400, …: nothing was streamed), or null once the socket is lost (401, a network error,
   * an `event: close`).
   * @param {Set<string>} since  topics the client recovers itself (its `since`)
   */
  _open(g, topics, since) {
    if (g.es) g.es.close(); // no event of the old stream after this: its last id is final
    g.es = null;
    g.topics = topics;
    g.marks.clear();
    const lastId = this.client._sseIds.get(g.key);
    const q = [`topics=${topics.map(encodeURIComponent).join(',')}`];
    if (g.opts.max_rate != null) q.push(`max_rate=${g.opts.max_rate}`);
    if (g.opts.delta) q.push(`delta=${encodeURIComponent(g.opts.delta)}`);
    if (this.token) q.push(`token=${encodeURIComponent(this.token)}`);
    if (lastId) q.push(`last_event_id=${encodeURIComponent(lastId)}`);
    const url = `${this.client._httpUrl('/sse')}?${q.join('&')}`;
    const ES = this.client.options.EventSource || globalThis.EventSource;
    return new Promise((resolve) => {
      let es;
      try { es = new ES(url); } catch (e) { this._lost(1006, e.message); return resolve(null); }
      g.es = es;
      let subscribed = false;
      const timer = setTimeout(() => es.onerror && es.onerror({ type: 'timeout' }), SSE_OPEN_TIMEOUT);
      es.addEventListener('subscribed', (ev) => {
        if (subscribed || g.es !== es) return;
        subscribed = true;
        clearTimeout(timer);
        const msg = JSON.parse(ev.data);
        const { positions = {}, recovered = {} } = msg;
        // Topics this socket delivered before the re-open and the client does not recover
        // itself: when the id could not carry them, their snapshot follows as a reset.
        for (const t of g.delivered) {
          if (since.has(t) || recovered[t] === true || !(t in positions)) continue;
          if (topics.some((pat) => patternMatches(pat, t))) g.marks.set(t, positions[t].epoch || '');
        }
        resolve({ msg });
      });
      const deliver = (ev) => { if (g.es === es) this._deliver(g, ev); };
      es.addEventListener('snapshot', deliver);
      es.addEventListener('update', deliver);
      es.addEventListener('close', (ev) => {
        if (g.es !== es) return;
        let c = {};
        try { c = JSON.parse(ev.data); } catch { /* a close without a body */ }
        this._lost(c.code || 1006, c.reason || '');
        resolve(null);
      });
      es.onerror = async (ev) => {
        if (g.es !== es) return;
        if (ev && typeof ev.data === 'string') { // an `event: error` frame, not a failure
          if (this.onmessage) this.onmessage({ data: ev.data });
          return;
        }
        // The browser would reconnect by itself, from its own last id; the client decides
        // instead (backoff, the id of every stream, refusals).
        es.close();
        clearTimeout(timer);
        g.es = null;
        if (subscribed) { this._lost(1006, 'stream lost'); return resolve(null); }
        const refused = await this.client._whyStreamRefused(url);
        if (refused && refused.code === 'unauthorized') {
          this.refusal = refused;
          this._lost(1006, refused.reason);
          return resolve(null);
        }
        if (refused) return resolve({ error: { code: refused.code, message: refused.reason } });
        this._lost(1006, 'stream failed');
        resolve(null);
      };
    });
  }

  /** Passes a `snapshot`/`update` event on as the WebSocket frame it is, keeping its id. */
  _deliver(g, ev) {
    if (ev.lastEventId) this.client._sseIds.set(g.key, ev.lastEventId);
    let text = ev.data;
    const m = /"topic":"([^"]*)"/.exec(text.slice(0, 400));
    if (m) {
      g.delivered.add(m[1]);
      const epoch = g.marks.get(m[1]);
      if (epoch != null) {
        g.marks.delete(m[1]);
        // Turned into the reset frame a cluster sends (§5): `epoch` just before `data`, which
        // stays last and byte for byte.
        const at = text.indexOf(',"data":');
        if (text.startsWith('{"type":"snapshot"') && at > 0) {
          text = `${text.slice(0, at)},"epoch":${JSON.stringify(epoch)}${text.slice(at)}`;
        }
      }
    }
    if (this.readyState === 1 && this.onmessage) this.onmessage({ data: text });
  }

  _lost(code, reason) {
    if (this.readyState === 3) return;
    const wasOpen = this.readyState === 1;
    this.readyState = 3;
    for (const g of this.groups.values()) if (g.es) { g.es.close(); g.es = null; }
    const fire = () => this.onclose && this.onclose({ code, reason, wasClean: wasOpen && code === 1000 });
    setTimeout(fire);
  }
}

// Fossil deltas: the browser's copy of `apply` in proto/src/fossil/mod.rs (its header describes
// the format), with the same checks, so that a damaged delta or a wrong base is an Error, never
// a wrong document. Both strings are JSON text; the delta counts UTF-8 bytes, hence the
// TextEncoder. The server keeps inserts on character boundaries: the delta is a plain string.
const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~';
const VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < DIGITS.length; i++) VALUE[DIGITS.charCodeAt(i)] = i;

/**
 * The target of `deltaString` applied to `baseString` (the previous data, as received).
 * @param {string} baseString @param {string} deltaString
 * @param {number} [maxLen=67108864] largest target accepted, in UTF-8 bytes
 * @returns {string} @throws {Error} on any fault in the delta, or a delta meant for another base
 */
export function fossilApply(baseString, deltaString, maxLen = 64 * 1024 * 1024) {
  const enc = new TextEncoder();
  const [base, delta] = [enc.encode(baseString), enc.encode(deltaString)];
  let pos = 0;
  const fail = (why) => { throw new Error(`fossil delta: ${why} (byte ${pos})`); };
  const number = () => {
    const start = pos;
    let v = 0; // below 2^53: exact until the 32-bit check
    while (pos < delta.length && delta[pos] < 128 && VALUE[delta[pos]] >= 0) {
      v = v * 64 + VALUE[delta[pos++]];
      if (v > 0xffffffff) fail('number over 32 bits');
    }
    if (pos === start) fail('number expected');
    return v;
  };
  const declared = number();
  if (delta[pos++] !== 0x0a) fail('header not ended by a newline');
  if (declared > maxLen) fail(`declares ${declared} bytes, over ${maxLen}`);
  // Slices, joined at the end: nothing is allocated on the strength of the header alone.
  const parts = [];
  let produced = 0;
  while (pos < delta.length) {
    const count = number();
    const op = delta[pos++];
    if (op === 0x3b) { // ';'
      if (produced !== declared) fail(`produces ${produced} bytes, declares ${declared}`);
      const out = new Uint8Array(produced);
      let at = 0;
      for (const p of parts) { out.set(p, at); at += p.length; }
      if (checksum(out) !== count) fail('checksum mismatch: a damaged delta or another base');
      if (pos !== delta.length) fail('data after the checksum');
      try { return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(out); } catch { fail('target is not UTF-8'); }
    }
    if (op !== 0x40 && op !== 0x3a) fail('unknown operator');
    if (count > declared - produced) fail('output longer than declared');
    if (op === 0x40) { // '@': copy from the base
      const offset = number();
      if (delta[pos++] !== 0x2c) fail("copy not ended by ','");
      if (offset + count > base.length) fail('copy outside the base');
      parts.push(base.subarray(offset, offset + count));
    } else { // ':': insert from the delta
      if (count > delta.length - pos) fail('insert past the end of the delta');
      parts.push(delta.subarray(pos, pos + count));
      pos += count;
    }
    produced += count;
  }
  fail('ends before its checksum');
}

// The sum of the bytes read as big-endian 32-bit words, the last padded with zeros, mod 2^32.
function checksum(b) {
  let sum = 0;
  const whole = b.length & ~3;
  for (let i = 0; i < whole; i += 4) sum = (sum + ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3])) >>> 0;
  let last = 0;
  for (let i = whole; i < b.length; i++) last |= b[i] << (24 - 8 * (i - whole));
  return (sum + last) >>> 0;
}
