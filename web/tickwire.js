// tickwire.js: browser client for the tickwire WebSocket push server.
//
// An ES module without dependencies or a build step. It mirrors the Rust client
// (client/src): reconnect with exponential backoff and full jitter, re-subscribe with `since`
// (the last seq and epoch per topic), a `reset` event when the server cannot recover a topic
// (its fresh snapshot follows), and duplicate updates (seq <= last seen) are dropped. A subscribe
// refused with a transient error (`unavailable`: a cluster node without Redis; `rate_limited`)
// is retried with backoff and reported as `subscription` events. A connection refused for its
// token (HTTP 401) is not retried with the same token.
// See docs/web.md and docs/protocol.md §4.5.

/**
 * @typedef {Object} Update
 * @property {'update'|'snapshot'} type
 * @property {string} topic
 * @property {number} seq
 * @property {number} ts   milliseconds since the Unix epoch (server clock)
 * @property {*} data
 */

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
 * @property {Backoff|false} [subscribeRetry]  backoff between retries of a subscribe refused with
 *   `unavailable` or `rate_limited` (default 500 ms growing x2 up to 30 s, full jitter); false: never retry
 * @property {typeof WebSocket} [WebSocket]  WebSocket implementation (default: globalThis.WebSocket)
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
    /** @type {string} the server's error code (`forbidden`, `invalid_topic`, ..., or `disconnected`, `timeout`, `closed`) */
    this.code = code;
    /** @type {string} the message alone, without the code */
    this.reason = message;
  }
}

/**
 * NATS-style match of a subscription pattern (`*` one token, `>` one or more) against a topic.
 * @param {string} pattern @param {string} topic @returns {boolean}
 */
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
 * `subscription` (detail: SubscriptionInfo) for subscriptions the client retries on its own.
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
    /** @type {'connecting'|'open'|'reconnecting'|'closed'} */
    this.status = 'connecting';
    /** @type {WebSocket|null} */ this.ws = null;
    this._nextId = 1;
    /** @type {Map<number, {frame: Object, resolve: Function, reject: Function, timer: any, kind: string, since?: Set<string>}>} */
    this._pending = new Map();
    /** @type {Array<{frame: Object, resolve: Function, reject: Function, timer: any, kind: string}>} requests waiting for a connection */
    this._queue = [];
    /** @type {Set<string>} confirmed subscriptions (patterns) */
    this.subscriptions = new Set();
    /** @type {Map<string, {seq: number, epoch: string|null}>} per topic: last delivered seq, epoch */
    this.positions = new Map();
    /** @type {Set<{topics: string[], attempt: number, timer: any}>} refused subscribes waiting for a retry */
    this._retries = new Set();
    this._attempt = 0;
    this._closed = false;
    this._timer = null;
    this._openedAt = 0;
    /** @type {TickwireError|null} why the server refused the last connection (401), if it did */
    this.refusal = null;
    this._connect();
  }

  /** @param {string} name @param {*} detail */
  _emit(name, detail, ...args) {
    const cb = this.options['on' + name[0].toUpperCase() + name.slice(1)];
    try {
      if (cb) cb(...args);
    } catch (e) {
      setTimeout(() => { throw e; });
    }
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  _setStatus(s) {
    if (this.status === s) return;
    this.status = s;
    this.dispatchEvent(new CustomEvent('status', { detail: s }));
  }

  async _connect() {
    if (this._closed) return;
    this._setStatus(this._attempt === 0 && !this._openedAt ? 'connecting' : 'reconnecting');
    let url = this.url;
    try {
      const tok = this.options.token;
      const token = typeof tok === 'function' ? await tok() : tok;
      if (token) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    } catch (e) {
      this._emit('error', e, e);
      this._scheduleReconnect();
      return;
    }
    if (this._closed) return;
    const WS = this.options.WebSocket || globalThis.WebSocket;
    let ws;
    try {
      ws = new WS(url);
    } catch (e) {
      this._emit('error', e, e);
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = (ev) => {
      opened = true;
      this.refusal = null;
      this._openedAt = Date.now();
      this._setStatus('open');
      this._resubscribe();
      for (const req of this._queue.splice(0)) this._send(req);
      // A new connection may reach a node that can serve them: retry now.
      for (const retry of [...this._retries]) this._sendRetry(retry);
      this._emit('open', null, ev);
    };
    ws.onmessage = (ev) => this._onFrame(ev.data);
    ws.onerror = () => {
      const err = new Error(`WebSocket error on ${this.url}`);
      this._emit('error', err, err);
    };
    ws.onclose = async (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this._connectionLost();
      this._emit('close', { code: ev.code, reason: ev.reason }, ev.code, ev.reason);
      const refusal = opened || this._closed ? null : await this._whyRefused(url);
      if (refusal) {
        this.refusal = refusal;
        this._emit('error', refusal, refusal);
        // The same token would be refused again; only a token function may bring a new one.
        if (typeof this.options.token !== 'function') return this._finish();
      }
      if (!this._closed && this.options.reconnect !== false && ev.code !== 4029) {
        if (this._openedAt && Date.now() - this._openedAt >= STABLE_MS) this._attempt = 0;
        this._scheduleReconnect();
      } else {
        this._finish();
      }
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
    } catch {
      return null;
    }
  }

  _scheduleReconnect() {
    if (this._closed) return;
    if (this.options.reconnect === false || this._attempt >= this.backoff.maxAttempts) {
      this._finish();
      return;
    }
    const b = this.backoff;
    const cap = Math.min(b.max, b.initial * Math.pow(b.factor, this._attempt));
    const delay = Math.random() * cap; // full jitter
    this._attempt++;
    this._setStatus('reconnecting');
    this._timer = setTimeout(() => this._connect(), delay);
  }

  _finish() {
    this._closed = true;
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
        if (r.topics.length) this._retries.add({ topics: r.topics, attempt: r.attempt, timer: null });
      } else if (r.kind !== 'resubscribe') this._queue.push(r);
    }
  }

  _fail(r, err) {
    clearTimeout(r.timer);
    r.reject(err);
  }

  _send(r) {
    if (r.kind === 'unsubscribe') this._cancelRetries(r.frame.topics);
    const id = this._nextId++;
    r.frame.id = id;
    this._pending.set(id, r);
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
      if ([...this.subscriptions].some((p) => patternMatches(p, t))) continue;
      since[t] = { seq: pos.seq, epoch: pos.epoch || '' };
    }
    const frame = { op: 'subscribe', topics: retry.topics };
    if (Object.keys(since).length) frame.since = since;
    this._send({
      frame, kind: 'retry', topics: retry.topics, attempt: retry.attempt,
      since: new Set(Object.keys(since)), resolve() {}, reject() {}, timer: null,
    });
  }

  /**
   * A subscribe nobody else sends again was refused: schedules a retry when the refusal is
   * transient and retries remain (`done` refused so far). Returns the SubscriptionInfo.
   * @param {string[]} topics @param {number} done @param {TickwireError} error
   */
  _refused(topics, done, error) {
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
      const retry = { topics: waiting, attempt, timer: null };
      retry.timer = setTimeout(() => {
        retry.timer = null;
        if (this.ws && this.ws.readyState === 1) this._sendRetry(retry);
        // otherwise it waits in _retries and goes out when the connection opens
      }, delay);
      this._retries.add(retry);
    }
    return { topics, state: 'retrying', error, attempt, delay, retryAt: Date.now() + delay };
  }

  /** An unsubscribe stops the retries of its topics, waiting or in flight. */
  _cancelRetries(topics) {
    for (const retry of [...this._retries]) {
      retry.topics = retry.topics.filter((t) => !topics.includes(t));
      if (retry.topics.length === 0) {
        clearTimeout(retry.timer);
        this._retries.delete(retry);
      }
    }
    for (const r of this._pending.values()) {
      if (r.kind === 'retry') r.topics = r.topics.filter((t) => !topics.includes(t));
      else if (r.kind === 'subscribe') (r.cancelled ||= []).push(...topics);
    }
  }

  _stopRetries() {
    for (const retry of this._retries) clearTimeout(retry.timer);
    this._retries.clear();
  }

  _subscriptionState(info) {
    this._emit('subscription', info, info.topics, info.state, info);
  }

  /** Forgets the positions of topics no subscription, waiting retry or retry in flight covers. */
  _pruneTracks() {
    const wanted = [...this.subscriptions];
    for (const r of this._retries) wanted.push(...r.topics);
    for (const r of this._pending.values()) if (r.kind === 'retry') wanted.push(...r.topics);
    for (const t of [...this.positions.keys()]) {
      if (!wanted.some((p) => patternMatches(p, t))) this.positions.delete(t);
    }
  }

  /** Re-establishes the confirmed subscriptions with `since` = the tracked positions. */
  _resubscribe() {
    const topics = [...this.subscriptions];
    this._pruneTracks();
    if (topics.length === 0) return;
    /** @type {Record<string, {seq: number, epoch: string}>} */
    const since = {};
    for (const [t, pos] of this.positions) since[t] = { seq: pos.seq, epoch: pos.epoch || '' };
    const frame = { op: 'subscribe', topics };
    if (Object.keys(since).length) frame.since = since;
    this._send({ frame, kind: 'resubscribe', since: new Set(Object.keys(since)), resolve() {}, reject() {}, timer: null });
  }

  /** Applies a `subscribed` reply's positions (see client/src/connection.rs apply_positions). */
  _applyPositions(msg, since) {
    const positions = msg.positions || {};
    const recovered = msg.recovered || {};
    const resets = [];
    const fresh = (p) => ({ seq: Math.max(0, p.seq - 1), epoch: p.epoch });
    for (const [topic, p] of Object.entries(positions)) {
      const track = this.positions.get(topic);
      if (since.has(topic)) {
        if (recovered[topic] === true) {
          if (track) track.epoch = p.epoch;
        } else {
          resets.push(topic);
          this.positions.set(topic, fresh(p));
        }
        continue;
      }
      if (!track) this.positions.set(topic, fresh(p));
      else if (track.epoch === p.epoch) { /* same stream */ }
      else if (track.epoch == null) track.epoch = p.epoch;
      else {
        resets.push(topic);
        this.positions.set(topic, fresh(p));
      }
    }
    for (const topic of since) {
      if (!(topic in positions)) {
        const track = this.positions.get(topic);
        this.positions.delete(topic);
        if (track && track.seq > 0) resets.push(topic);
      }
    }
    for (const topic of resets) this._emit('reset', { topic }, topic);
  }

  _onFrame(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      this._emit('error', e, e);
      return;
    }
    if (msg.type === 'snapshot' && typeof msg.epoch === 'string') {
      // A reset outside any subscribe reply: the topic's stream restarted (a cluster's broker
      // lost it), possibly at a lower seq. Track it from here.
      this.positions.set(msg.topic, { seq: msg.seq, epoch: msg.epoch });
      this._emit('reset', { topic: msg.topic }, msg.topic);
      this._emit('message', msg, msg);
      return;
    }
    if (msg.type === 'update' || msg.type === 'snapshot') {
      const track = this.positions.get(msg.topic);
      if (track && msg.seq <= track.seq) return; // duplicate
      if (track) track.seq = msg.seq;
      else this.positions.set(msg.topic, { seq: msg.seq, epoch: null });
      this._emit('message', msg, msg);
      return;
    }
    const r = msg.id != null ? this._pending.get(msg.id) : undefined;
    if (!r) {
      if (msg.type === 'error') {
        const err = new TickwireError(msg.code, msg.message);
        this._emit('error', err, err);
      }
      return;
    }
    this._pending.delete(msg.id);
    clearTimeout(r.timer);
    if (msg.type === 'error') {
      const err = new TickwireError(msg.code, msg.message);
      if (r.kind === 'subscribe') {
        const wanted = r.frame.topics.filter((t) => !(r.cancelled || []).includes(t));
        const info = this._refused(wanted, 0, err);
        r.reject(err);
        // A refusal for good is the caller's to handle; a retry is news.
        if (info.state === 'retrying' && wanted.length) this._subscriptionState({ ...info, topics: r.frame.topics });
      } else if (r.kind === 'resubscribe' || (r.kind === 'retry' && r.topics.length)) {
        // Nobody awaits these: the server refuses what it accepted before (or still refuses).
        const topics = r.kind === 'retry' ? r.topics : r.frame.topics;
        for (const t of topics) this.subscriptions.delete(t);
        const info = this._refused(topics, r.kind === 'retry' ? r.attempt : 0, err);
        this._pruneTracks();
        this._subscriptionState(info);
        if (info.state === 'failed') this._emit('error', err, err);
      } else {
        r.reject(err);
      }
      return;
    }
    if (msg.type === 'subscribed' && r.kind === 'retry') {
      if (r.topics.length === 0) return; // unsubscribed meanwhile: the `unsubscribed` reply follows
      for (const t of r.topics) this.subscriptions.add(t);
      this._subscriptionState({ topics: r.topics, state: 'subscribed' });
      this._applyPositions(msg, r.since);
      return;
    }
    if (msg.type === 'subscribed') {
      this._applyPositions(msg, r.since || new Set());
      for (const t of msg.topics) this.subscriptions.add(t);
      if (r.kind === 'subscribe') {
        // Accepted now: an older refusal of the same topics needs no retry.
        for (const retry of [...this._retries]) {
          retry.topics = retry.topics.filter((t) => !msg.topics.includes(t));
          if (retry.topics.length === 0) {
            clearTimeout(retry.timer);
            this._retries.delete(retry);
          }
        }
      }
    } else if (msg.type === 'unsubscribed') {
      for (const t of msg.topics) this.subscriptions.delete(t);
    }
    r.resolve(msg);
  }

  _request(frame, kind) {
    if (this._closed) return Promise.reject(new TickwireError('closed', 'client is closed'));
    return new Promise((resolve, reject) => {
      const r = { frame, kind, resolve, reject, timer: null };
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
   * @param {string|string[]} topics @returns {Promise<Object>}
   */
  subscribe(topics) {
    return this._request({ op: 'subscribe', topics: [].concat(topics) }, 'subscribe');
  }

  /**
   * Removes subscriptions by their exact text. Resolves with the `unsubscribed` reply.
   * @param {string|string[]} topics @returns {Promise<Object>}
   */
  unsubscribe(topics) {
    return this._request({ op: 'unsubscribe', topics: [].concat(topics) }, 'unsubscribe');
  }

  /**
   * Publishes `data` to `topic` (must match the connection's publish ACL: `auth.anonymous.publish` or the token's `publish` claim).
   * Resolves with the `published` reply ({topic, seq}); rejects with a TickwireError.
   * @param {string} topic @param {*} data @returns {Promise<Object>}
   */
  publish(topic, data) {
    return this._request({ op: 'publish', topic, data: data === undefined ? null : data }, 'publish');
  }

  /** Closes the connection for good (code 1000); no reconnect. */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    this._stopRetries();
    const ws = this.ws;
    if (ws) ws.close(1000, 'client closed');
    else this._finish();
  }
}
