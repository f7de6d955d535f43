#!/usr/bin/env node
// phoenix.js conformance harness: drives the real `phoenix` npm client (Socket, Channel, Presence)
// against a server and prints ONE JSON line with everything it observed.
//
//   node conformance.js <scenario> '<json-args>'
//
// json-args always has "url": the socket base, e.g. "ws://127.0.0.1:4000/socket" (phoenix.js appends
// "/websocket"); "wait_ms" (default 5000) is the default time limit of every wait, "deadline_ms" the overall one. Scenarios (see SCENARIOS below and tests/phoenix_js.py): connect, refused, heartbeat,
// join, unmatched, push, broadcast, leave, duplicate_join, crash, reconnect, presence, script.
// Every named scenario is a list of steps for the generic "script" engine plus a summary of the events.
//
// Output (stdout, one line): {"ok", "scenario", "failed_step", "summary", "events", "duration_ms"}.
//   ok           every wait of the scenario was satisfied in time
//   failed_step  null, or {"index", "op", "error"} for the first step that failed (the script stops there)
//   events       the timeline: {"t": ms since start, "kind", "socket", ...}, see record() callers
// Exit codes: 0 the scenario ran (whether ok or not); 2 harness error (bad arguments, a bug, a crash);
// 3 the overall deadline ("deadline_ms", default 20000) expired: the JSON line is still printed.
"use strict"

const {performance} = require("node:perf_hooks")
const WebSocket = require("ws")
const {Socket, Presence} = require("phoenix")

const T0 = performance.now()
const now = () => Math.round((performance.now() - T0) * 1000) / 1000
const MAX_EVENTS = 20000

// ---------------------------------------------------------------------------------------------
// Event log and waiting

class Log {
  constructor(){
    this.events = []
    this.dropped = 0
    this.waiters = new Set()
  }

  record(kind, fields){
    if(this.frozen){ return null }
    const ev = Object.assign({t: now(), kind}, fields)
    if(this.events.length < MAX_EVENTS){ this.events.push(ev) } else { this.dropped++ }
    for(const w of [...this.waiters]){ w() }
    return ev
  }

  // Resolves with the matching events once `count` events from index `since` on match `pattern`;
  // rejects after timeoutMs.
  waitFor(pattern, {count = 1, since = 0, timeoutMs = 5000} = {}){
    return new Promise((resolve, reject) => {
      const check = () => {
        const hits = this.events.slice(since).filter(ev => matches(ev, pattern))
        if(hits.length >= count){
          this.waiters.delete(check)
          clearTimeout(timer)
          resolve(hits)
          return true
        }
        return false
      }
      const timer = setTimeout(() => {
        this.waiters.delete(check)
        const seen = this.events.slice(since).filter(ev => matches(ev, pattern)).length
        reject(new Error(`timeout after ${timeoutMs} ms waiting for ${count} x ${JSON.stringify(pattern)} (saw ${seen})`))
      }, timeoutMs)
      if(!check()){ this.waiters.add(check) }
    })
  }
}

// Partial deep match. Operators: {"$ne": x}, {"$contains": x} (array), {"$not_contains": x},
// {"$exists": bool}, {"$gte": n}, {"$lte": n}, {"$in": [..]}.
function matches(value, pattern){
  if(pattern !== null && typeof pattern === "object" && !Array.isArray(pattern)){
    const keys = Object.keys(pattern)
    if(keys.length > 0 && keys.every(k => k.startsWith("$"))){
      return keys.every(op => matchOp(value, op, pattern[op]))
    }
    if(value === null || typeof value !== "object"){ return false }
    return keys.every(k => matches(value[k], pattern[k]))
  }
  if(Array.isArray(pattern)){
    return Array.isArray(value) && value.length === pattern.length && pattern.every((p, i) => matches(value[i], p))
  }
  return value === pattern
}

function matchOp(value, op, arg){
  switch(op){
    case "$ne": return !matches(value, arg)
    case "$contains": return Array.isArray(value) && value.some(v => matches(v, arg))
    case "$not_contains": return Array.isArray(value) && !value.some(v => matches(v, arg))
    case "$exists": return (value !== undefined) === arg
    case "$gte": return typeof value === "number" && value >= arg
    case "$lte": return typeof value === "number" && value <= arg
    case "$in": return arg.some(a => matches(value, a))
    default: throw new Error(`unknown match operator ${op}`)
  }
}

// ---------------------------------------------------------------------------------------------
// A `ws` WebSocket that records the raw frames, the handshake and the close, for phoenix.js.

function recordingTransport(log, socketName, wsOptions){
  return class RecordingWebSocket extends WebSocket {
    constructor(url, protocols){
      super(url, protocols, wsOptions)
      log.record("ws_create", {socket: socketName, url, protocols: protocols || null})
      this.on("upgrade", res => {
        log.record("ws_upgrade", {
          socket: socketName, status: res.statusCode,
          subprotocol: res.headers["sec-websocket-protocol"] || null
        })
      })
      this.on("open", () => log.record("ws_open", {socket: socketName, protocol: this.protocol || null}))
      this.on("message", (data, isBinary) => {
        if(isBinary){
          log.record("recv", {socket: socketName, binary: true, size: data.length})
          return
        }
        const text = data.toString("utf8")
        log.record("recv", Object.assign({socket: socketName}, decodeFrame(text)))
      })
      this.on("error", err => {
        const m = /Unexpected server response: (\d+)/.exec(err.message)
        log.record("ws_error", {socket: socketName, message: err.message, status: m ? Number(m[1]) : null})
      })
      this.on("close", (code, reason) => {
        log.record("ws_close", {socket: socketName, code, reason: reason.toString("utf8")})
      })
    }

    send(data, ...rest){
      if(typeof data === "string"){
        log.record("send", Object.assign({socket: socketName}, decodeFrame(data)))
      } else {
        log.record("send", {socket: socketName, binary: true})
      }
      return super.send(data, ...rest)
    }
  }
}

function decodeFrame(text){
  let frame
  try { frame = JSON.parse(text) } catch(e){ return {raw: text, json_error: e.message} }
  if(Array.isArray(frame) && frame.length >= 5){
    const [join_ref, ref, topic, event, payload] = frame
    return {frame, join_ref, ref, topic, event, payload}
  }
  return {frame}
}

// ---------------------------------------------------------------------------------------------
// The script engine

const DEFAULT_WAIT_MS = 5000

class Runner {
  constructor(args){
    this.args = args
    this.url = args.url
    if(typeof this.url !== "string"){ throw new UsageError("args.url (the socket base URL) is required") }
    this.log = new Log()
    this.sockets = new Map()   // name -> {socket, name}
    this.channels = new Map()  // name -> {channel, socketName, topic, presence}
    this.marks = new Map()
    this.summary = {}
  }

  record(kind, fields){ return this.log.record(kind, fields) }

  sock(name){
    const s = this.sockets.get(name || "s1")
    if(!s){ throw new UsageError(`no socket named ${JSON.stringify(name || "s1")}; connect it first`) }
    return s
  }

  chan(name){
    const c = this.channels.get(name)
    if(!c){ throw new UsageError(`no channel named ${JSON.stringify(name)}; join it first`) }
    return c
  }

  sinceIndex(step, stepStart){
    const since = step.since === undefined ? "start" : step.since
    if(since === "start"){ return 0 }
    if(since === "step"){ return stepStart }
    if(this.marks.has(since)){ return this.marks.get(since) }
    throw new UsageError(`unknown mark ${JSON.stringify(since)}`)
  }

  async run(steps){
    for(let i = 0; i < steps.length; i++){
      // args.wait_ms is the default of every wait of the scenario
      const step = Object.assign({}, steps[i])
      if(step.wait_ms === undefined && this.args.wait_ms !== undefined){ step.wait_ms = this.args.wait_ms }
      const start = this.log.events.length
      if(step.mark){ this.marks.set(step.mark, start) }
      this.record("step", {index: i, op: step.op, label: step.label || null})
      const fn = OPS[step.op]
      if(!fn){ throw new UsageError(`unknown op ${JSON.stringify(step.op)} in step ${i}`) }
      try {
        await fn.call(this, step, start)
      } catch(e){
        if(e instanceof UsageError){ throw e }
        this.record("step_failed", {index: i, op: step.op, error: e.message})
        return {index: i, op: step.op, error: e.message}
      }
    }
    return null
  }

  teardown(){
    // what the final disconnect causes (channel errors, the close) is not part of the observation
    this.log.frozen = true
    for(const {socket} of this.sockets.values()){
      try { socket.disconnect() } catch(_e){ /* already gone */ }
    }
  }
}

class UsageError extends Error {}

const OPS = {
  // {"op":"connect", "socket":"s1", "params":{}, "auth_token":"...", "heartbeat_ms":30000,
  //  "reconnect_ms":10 (number or list), "rejoin_ms":1000 (number or list), "timeout_ms":10000 (push timeout),
  //  "url": override, "vsn": "2.0.0", "wait":"open"|"error"|"none", "wait_ms":5000}
  async connect(step, start){
    const name = step.socket || "s1"
    if(this.sockets.has(name)){ throw new UsageError(`socket ${name} already exists`) }
    const opts = {
      transport: recordingTransport(this.log, name, {handshakeTimeout: step.handshake_ms || 5000}),
      params: step.params || {},
      heartbeatIntervalMs: step.heartbeat_ms || 30000,
      reconnectAfterMs: backoff(step.reconnect_ms, [10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000]),
      rejoinAfterMs: backoff(step.rejoin_ms, [1000, 2000, 5000, 10000]),
      timeout: step.timeout_ms || 10000,
    }
    if(step.auth_token !== undefined){ opts.authToken = step.auth_token }
    if(step.vsn !== undefined){ opts.vsn = step.vsn }
    const socket = new Socket(step.url || this.url, opts)
    socket.onOpen(() => this.record("open", {socket: name}))
    socket.onClose(ev => this.record("close", {socket: name, code: ev.code, reason: ev.reason, was_clean: ev.wasClean}))
    socket.onError(err => this.record("error", {socket: name, message: (err && err.message) || String(err)}))
    this.sockets.set(name, {socket, name})
    socket.connect()
    const wait = step.wait || "open"
    const timeoutMs = step.wait_ms || DEFAULT_WAIT_MS
    if(wait === "open"){
      await this.log.waitFor({kind: "open", socket: name}, {since: start, timeoutMs})
    } else if(wait === "error"){
      await this.log.waitFor({kind: "ws_close", socket: name}, {since: start, timeoutMs})
    }
  },

  // {"op":"disconnect", "socket":"s1", "code":1000, "reason":""}: closes and stops reconnecting.
  async disconnect(step){
    const {socket} = this.sock(step.socket)
    await new Promise(resolve => socket.disconnect(resolve, step.code, step.reason))
    this.record("disconnected", {socket: step.socket || "s1"})
  },

  // {"op":"join", "socket":"s1", "channel":name (default: topic), "topic":"room:1", "params":{},
  //  "presence":false, "wait":true, "wait_ms":5000, "leave_on_error":true, "timeout_ms": join timeout}
  async join(step, start){
    const socketName = step.socket || "s1"
    const {socket} = this.sock(socketName)
    const name = step.channel || step.topic
    if(this.channels.has(name)){ throw new UsageError(`channel ${name} already exists`) }
    const channel = socket.channel(step.topic, step.params || {})
    const entry = {channel, socketName, topic: step.topic, presence: null}
    this.channels.set(name, entry)
    const base = {socket: socketName, channel: name, topic: step.topic}
    const origOnMessage = channel.onMessage.bind(channel)
    channel.onMessage = (event, payload, ref, joinRef) => {
      this.record("chan_msg", Object.assign({}, base, {event, payload, ref: ref || null, join_ref: joinRef || null}))
      return origOnMessage(event, payload, ref, joinRef)
    }
    channel.onError(reason => this.record("chan_error", Object.assign({}, base, {reason: reason === undefined ? null : reason})))
    channel.onClose(() => this.record("chan_close", base))
    if(step.presence){
      const presence = new Presence(channel)
      entry.presence = presence
      presence.onSync(() => {
        const list = presence.list((key, {metas}) => ({key, metas}))
        const keys = list.map(p => p.key).sort()
        const metaCount = list.reduce((n, p) => n + p.metas.length, 0)
        this.record("presence_sync", Object.assign({}, base, {keys, meta_count: metaCount, list}))
      })
      presence.onJoin((key, current, joined) => {
        this.record("presence_join", Object.assign({}, base, {key, metas: joined.metas, had: current ? current.metas.length : 0}))
      })
      presence.onLeave((key, current, left) => {
        this.record("presence_leave", Object.assign({}, base, {key, metas: left.metas, remaining: current.metas.length}))
      })
    }
    const leaveOnError = step.leave_on_error !== false
    const push = channel.join(step.timeout_ms)
    for(const status of ["ok", "error", "timeout"]){
      push.receive(status, response => {
        this.record("join_reply", Object.assign({}, base, {status, response: response === undefined ? null : response, join_ref: channel.joinRef()}))
        if(status === "error" && leaveOnError && !entry.left){
          entry.left = true
          // a refused join is retried forever by phoenix.js (protocol.md §4.8): the app must leave
          channel.leave().receive("ok", () => this.record("leave_reply", Object.assign({}, base, {status: "ok"})))
            .receive("timeout", () => this.record("leave_reply", Object.assign({}, base, {status: "timeout"})))
        }
      })
    }
    if(step.wait !== false){
      await this.log.waitFor({kind: "join_reply", channel: name}, {since: start, timeoutMs: step.wait_ms || DEFAULT_WAIT_MS})
    }
  },

  // {"op":"push", "channel":name, "event":"ev", "payload":{}, "timeout_ms":push timeout, "wait":true, "wait_ms"}
  // records "push_reply" {status: ok|error|timeout|..., response, ref, id}
  async push(step, start){
    const {channel, socketName, topic} = this.chan(step.channel)
    const id = step.id || `${step.channel}:${step.event}:${start}`
    const push = channel.push(step.event, step.payload || {}, step.timeout_ms)
    const ref = () => push.ref || null
    this.record("push_sent", {socket: socketName, channel: step.channel, topic, event: step.event, id})
    for(const status of ["ok", "error", "timeout"]){
      push.receive(status, response => {
        this.record("push_reply", {
          socket: socketName, channel: step.channel, topic, event: step.event, id, status,
          response: response === undefined ? null : response, ref: ref(), join_ref: channel.joinRef()
        })
      })
    }
    if(step.wait !== false){
      await this.log.waitFor({kind: "push_reply", id}, {since: start, timeoutMs: step.wait_ms || DEFAULT_WAIT_MS})
    }
  },

  // {"op":"raw_push", "socket":"s1", "topic":t, "event":e, "payload":{}, "join_ref": null | "<literal>",
  //  "join_ref_of": channel name (use its current join_ref), "join": true (phx_join: join_ref = ref),
  //  "wait": true (for the reply with this ref), "wait_ms", "id"}
  // Sends through socket.push (the same path Channel uses), bypassing the Channel state machine.
  async raw_push(step, start){
    const {socket, name} = this.sock(step.socket)
    const ref = socket.makeRef()
    let joinRef = step.join_ref === undefined ? null : step.join_ref
    if(step.join_ref_of){ joinRef = this.chan(step.join_ref_of).channel.joinRef() }
    if(step.join || step.event === "phx_join"){ joinRef = ref }
    const id = step.id || `raw:${ref}`
    socket.push({topic: step.topic, event: step.event, payload: step.payload || {}, ref, join_ref: joinRef})
    this.record("raw_sent", {socket: name, topic: step.topic, event: step.event, ref, join_ref: joinRef, id})
    if(step.wait !== false){
      await this.log.waitFor({kind: "recv", socket: name, ref, event: "phx_reply"}, {since: start, timeoutMs: step.wait_ms || DEFAULT_WAIT_MS})
    }
  },

  // {"op":"leave", "channel":name, "wait":true, "wait_ms"}: records "leave_reply" {status}
  async leave(step, start){
    const entry = this.chan(step.channel)
    const base = {socket: entry.socketName, channel: step.channel, topic: entry.topic}
    entry.left = true
    entry.channel.leave()
      .receive("ok", r => this.record("leave_reply", Object.assign({}, base, {status: "ok", response: r === undefined ? null : r})))
      .receive("timeout", () => this.record("leave_reply", Object.assign({}, base, {status: "timeout", response: null})))
    if(step.wait !== false){
      await this.log.waitFor({kind: "leave_reply", channel: step.channel}, {since: start, timeoutMs: step.wait_ms || DEFAULT_WAIT_MS})
    }
  },

  // {"op":"wait", "match": {...event pattern...}, "count":1, "since":"start"|"step"|mark, "wait_ms":5000}
  async wait(step, start){
    if(!step.match){ throw new UsageError("wait needs a match pattern") }
    await this.log.waitFor(step.match, {count: step.count || 1, since: this.sinceIndex(step, start), timeoutMs: step.wait_ms || DEFAULT_WAIT_MS})
  },

  // {"op":"sleep", "ms":100}: observe for a while (e.g. that nothing else arrives)
  async sleep(step){
    await new Promise(resolve => setTimeout(resolve, step.ms || 0))
  },

  // {"op":"mark", "name":"x"}: a point in the timeline for later "since"
  async mark(step, start){
    this.marks.set(step.name, start)
  },

  // {"op":"ping", "socket":"s1", "wait_ms"}: socket.ping; records "ping" {rtt_ms}
  async ping(step){
    const {socket, name} = this.sock(step.socket)
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("ping timeout")), step.wait_ms || DEFAULT_WAIT_MS)
      const sent = socket.ping(rtt => { clearTimeout(timer); this.record("ping", {socket: name, rtt_ms: rtt}); resolve() })
      if(!sent){ clearTimeout(timer); reject(new Error("ping: socket not connected")) }
    })
  },
}

function backoff(spec, fallback){
  const list = spec === undefined ? fallback : (Array.isArray(spec) ? spec : [spec])
  return tries => list[Math.min(tries, list.length) - 1]
}

// ---------------------------------------------------------------------------------------------
// Named scenarios: steps plus a summary built from the events

const frames = (events, pred) => events.filter(e => (e.kind === "recv" || e.kind === "send") && pred(e))
const pick = (e) => e ? {join_ref: e.join_ref, ref: e.ref, topic: e.topic, event: e.event, payload: e.payload} : null
const connectStep = (a, extra) => Object.assign({op: "connect", socket: "s1", params: a.params || {}}, pick2(a, ["auth_token", "vsn", "heartbeat_ms", "reconnect_ms", "rejoin_ms", "timeout_ms", "wait_ms"]), extra || {})
function pick2(obj, keys){ const r = {}; for(const k of keys){ if(obj[k] !== undefined){ r[k] = obj[k] } } return r }
const firstJoinReply = (events, ch) => events.find(e => e.kind === "join_reply" && e.channel === ch) || null
const replyFrameFor = (events, socket, ref) => pick(events.find(e => e.kind === "recv" && e.socket === socket && e.ref === ref && e.event === "phx_reply"))
const wsCreates = (events, socket) => events.filter(e => e.kind === "ws_create" && e.socket === (socket || "s1"))

const SCENARIOS = {
  // args: params, auth_token, hold_ms
  connect: {
    steps: a => [connectStep(a), {op: "sleep", ms: a.hold_ms || 0}, {op: "disconnect"}],
    summary: ev => {
      const create = ev.find(e => e.kind === "ws_create")
      const upgrade = ev.find(e => e.kind === "ws_upgrade")
      const open = ev.find(e => e.kind === "ws_open")
      return {
        opened: !!open, url: create ? create.url : null, protocols: create ? create.protocols : null,
        protocol: open ? open.protocol : null, upgrade_status: upgrade ? upgrade.status : null,
        open_ms: open && create ? Math.round((open.t - create.t) * 1000) / 1000 : null,
        closes: ev.filter(e => e.kind === "ws_close").map(e => ({code: e.code, reason: e.reason})),
      }
    },
  },

  // args: params, auth_token, observe_ms (300), after_ms (300), reconnect_ms (20)
  // The refused socket keeps reconnecting (protocol.md §0.8) until disconnect(); the summary counts attempts.
  refused: {
    steps: a => [
      connectStep(a, {wait: "error", reconnect_ms: a.reconnect_ms || 20}),
      {op: "sleep", ms: a.observe_ms === undefined ? 300 : a.observe_ms},
      {op: "disconnect", mark: "disconnected"},
      {op: "sleep", ms: a.after_ms === undefined ? 300 : a.after_ms},
    ],
    summary: (ev, r) => {
      const cut = r.marks.has("disconnected") ? r.marks.get("disconnected") : ev.length
      const errors = ev.filter(e => e.kind === "ws_error")
      return {
        opened: ev.some(e => e.kind === "ws_open"),
        status: errors.length ? errors[0].status : null,
        errors: errors.map(e => e.message).slice(0, 5),
        close_codes: ev.filter(e => e.kind === "ws_close").map(e => e.code),
        attempts_before_disconnect: ev.slice(0, cut).filter(e => e.kind === "ws_create").length,
        attempts_after_disconnect: ev.slice(cut).filter(e => e.kind === "ws_create").length,
      }
    },
  },

  // args: params, heartbeat_ms (50), duration_ms (500)
  heartbeat: {
    steps: a => [connectStep(a, {heartbeat_ms: a.heartbeat_ms || 50}), {op: "sleep", ms: a.duration_ms || 500}],
    summary: ev => {
      const beats = frames(ev, e => e.kind === "send" && e.topic === "phoenix" && e.event === "heartbeat")
      const replies = new Map(frames(ev, e => e.kind === "recv" && e.event === "phx_reply" && e.topic === "phoenix").map(e => [e.ref, e]))
      const answered = beats.filter(b => replies.has(b.ref))
      return {
        heartbeats_sent: beats.length,
        heartbeats_answered: answered.length,
        unanswered_refs: beats.filter(b => !replies.has(b.ref)).map(b => b.ref),
        sent_frames: beats.slice(0, 3).map(b => b.frame),
        reply_frames: answered.slice(0, 3).map(b => replies.get(b.ref).frame),
        rtt_ms: answered.map(b => Math.round((replies.get(b.ref).t - b.t) * 1000) / 1000),
        closes: ev.filter(e => e.kind === "ws_close").map(e => ({code: e.code, reason: e.reason})),
        opens: ev.filter(e => e.kind === "ws_open").length,
      }
    },
  },

  // args: topic, join_params, params, leave_on_error (true), after_ms (200)
  join: {
    steps: a => [
      connectStep(a),
      {op: "join", topic: a.topic, channel: "c", params: a.join_params || {}, leave_on_error: a.leave_on_error !== false},
      {op: "sleep", ms: a.after_ms === undefined ? 200 : a.after_ms},
    ],
    summary: ev => joinSummary(ev, "c"),
  },

  // args: topic (join that is expected to be unmatched), push_topic (a topic never joined), event, payload
  unmatched: {
    steps: a => [
      connectStep(a),
      {op: "join", topic: a.topic, channel: "c"},
      {op: "raw_push", topic: a.push_topic || a.topic, event: a.event || "ping", payload: a.payload || {}, id: "push"},
      {op: "sleep", ms: a.after_ms === undefined ? 100 : a.after_ms},
    ],
    summary: ev => {
      const sent = ev.find(e => e.kind === "raw_sent" && e.id === "push")
      return Object.assign(joinSummary(ev, "c"), {push_reply_frame: sent ? replyFrameFor(ev, "s1", sent.ref) : null})
    },
  },

  // args: topic, join_params, pushes: [{event, payload, timeout_ms}]
  push: {
    steps: a => [
      connectStep(a),
      {op: "join", topic: a.topic, channel: "c", params: a.join_params || {}},
      ...(a.pushes || []).map((p, i) => ({op: "push", channel: "c", event: p.event, payload: p.payload || {}, timeout_ms: p.timeout_ms, id: `p${i}`, wait_ms: p.wait_ms})),
    ],
    summary: ev => ({
      join: joinSummary(ev, "c"),
      replies: ev.filter(e => e.kind === "push_reply").map(e => ({
        id: e.id, event: e.event, status: e.status, response: e.response, ref: e.ref, join_ref: e.join_ref,
        frame: e.ref ? replyFrameFor(ev, "s1", e.ref) : null,
      })),
    }),
  },

  // args: topic, join_params, trigger: {event, payload} | null, event (expected broadcast event), count (1)
  broadcast: {
    steps: a => [
      connectStep(a),
      {op: "join", topic: a.topic, channel: "c", params: a.join_params || {}},
      ...(a.trigger ? [{op: "push", channel: "c", event: a.trigger.event, payload: a.trigger.payload || {}, wait: false}] : []),
      {op: "wait", match: {kind: "recv", topic: a.topic, event: a.event}, count: a.count || 1, wait_ms: a.wait_ms},
      {op: "sleep", ms: a.after_ms || 0},
    ],
    summary: (ev, r) => ({
      received: frames(ev, e => e.kind === "recv" && e.topic === r.args.topic && e.event === r.args.event).map(pick),
      dispatched: ev.filter(e => e.kind === "chan_msg" && e.event === r.args.event).length,
    }),
  },

  // args: topic, event ("ping"), payload. Leave, then push on the left topic with the old join_ref.
  leave: {
    steps: a => [
      connectStep(a),
      {op: "join", topic: a.topic, channel: "c", params: a.join_params || {}},
      {op: "leave", channel: "c"},
      {op: "wait", match: {kind: "recv", topic: a.topic, event: "phx_close"}, wait_ms: a.close_wait_ms || 1000},
      // the join_ref the channel had: what a late client push would carry
      {op: "raw_push", topic: a.topic, event: a.event || "ping", payload: a.payload || {}, join_ref_of: "c", id: "after"},
    ],
    summary: ev => {
      const join = firstJoinReply(ev, "c")
      const leaveSent = frames(ev, e => e.kind === "send" && e.event === "phx_leave")[0]
      const after = ev.find(e => e.kind === "raw_sent" && e.id === "after")
      return {
        join_ref: join ? join.join_ref : null,
        leave_sent: pick(leaveSent),
        leave_reply: leaveSent ? replyFrameFor(ev, "s1", leaveSent.ref) : null,
        close_frame: pick(frames(ev, e => e.kind === "recv" && e.event === "phx_close")[0]),
        channel_closed: ev.some(e => e.kind === "chan_close" && e.channel === "c"),
        push_after_leave_sent: after ? {ref: after.ref, join_ref: after.join_ref} : null,
        push_after_leave_reply: after ? replyFrameFor(ev, "s1", after.ref) : null,
      }
    },
  },

  // args: topic, join_params. Joins with phoenix.js, then sends a second phx_join for the same topic raw.
  duplicate_join: {
    steps: a => [
      connectStep(a),
      {op: "join", topic: a.topic, channel: "c", params: a.join_params || {}},
      {op: "raw_push", topic: a.topic, event: "phx_join", payload: a.join_params || {}, id: "dup"},
      {op: "wait", match: {kind: "recv", topic: a.topic, event: "phx_close"}, wait_ms: a.close_wait_ms || 2000},
      {op: "sleep", ms: a.after_ms || 50},
    ],
    summary: ev => {
      const first = firstJoinReply(ev, "c")
      const dup = ev.find(e => e.kind === "raw_sent" && e.id === "dup")
      const recvs = frames(ev, e => e.kind === "recv")
      const dupReplyIdx = dup ? recvs.findIndex(e => e.ref === dup.ref && e.event === "phx_reply") : -1
      const closeIdx = recvs.findIndex(e => e.event === "phx_close")
      return {
        first_join_ref: first ? first.join_ref : null,
        second_join_ref: dup ? dup.ref : null,
        second_reply: dupReplyIdx >= 0 ? pick(recvs[dupReplyIdx]) : null,
        close_frame: closeIdx >= 0 ? pick(recvs[closeIdx]) : null,
        reply_before_close: dupReplyIdx >= 0 && closeIdx >= 0 ? dupReplyIdx < closeIdx : null,
        channel_closed: ev.some(e => e.kind === "chan_close" && e.channel === "c"),
      }
    },
  },

  // args: topic, event ("boom"), payload, rejoin_ms (50). Crash the channel and watch phoenix.js rejoin.
  crash: {
    steps: a => [
      connectStep(a, {rejoin_ms: a.rejoin_ms || 50}),
      {op: "join", topic: a.topic, channel: "c", params: a.join_params || {}},
      {op: "push", channel: "c", event: a.event || "boom", payload: a.payload || {}, wait: false, timeout_ms: a.push_timeout_ms || 2000},
      {op: "wait", match: {kind: "chan_error", channel: "c"}, wait_ms: a.wait_ms},
      {op: "wait", match: {kind: "join_reply", channel: "c", status: "ok"}, count: 2, wait_ms: a.wait_ms},
    ],
    summary: ev => {
      const joins = ev.filter(e => e.kind === "join_reply" && e.channel === "c")
      const err = frames(ev, e => e.kind === "recv" && e.event === "phx_error")[0]
      const refs = joins.map(j => j.join_ref)
      return {
        error_frame: pick(err),
        channel_errors: ev.filter(e => e.kind === "chan_error").map(e => e.reason),
        join_replies: joins.map(j => ({status: j.status, join_ref: j.join_ref, response: j.response})),
        rejoined: joins.length >= 2 && joins[joins.length - 1].status === "ok" && new Set(refs).size === refs.length,
        rejoin_delay_ms: err && joins.length >= 2 ? Math.round((joins[1].t - err.t) * 1000) / 1000 : null,
      }
    },
  },

  // args: topic, trigger: {event, payload} (a push that makes the server drop the socket) | null (the
  // server drops it by itself), reconnect_ms (20), wait_ms
  reconnect: {
    steps: a => [
      connectStep(a, {reconnect_ms: a.reconnect_ms || 20}),
      {op: "join", topic: a.topic, channel: "c", params: a.join_params || {}},
      ...(a.trigger ? [{op: "push", channel: "c", event: a.trigger.event, payload: a.trigger.payload || {}, wait: false, timeout_ms: 1000}] : []),
      {op: "wait", match: {kind: "ws_close", socket: "s1"}, wait_ms: a.wait_ms},
      {op: "wait", match: {kind: "open", socket: "s1"}, count: 2, wait_ms: a.wait_ms},
      {op: "wait", match: {kind: "join_reply", channel: "c", status: "ok"}, count: 2, wait_ms: a.wait_ms},
    ],
    summary: ev => {
      const joins = ev.filter(e => e.kind === "join_reply" && e.channel === "c")
      const refs = joins.map(j => j.join_ref)
      const close = ev.find(e => e.kind === "ws_close")
      return {
        close: close ? {code: close.code, reason: close.reason} : null,
        connects: wsCreates(ev).length,
        opens: ev.filter(e => e.kind === "open").length,
        channel_errors: ev.filter(e => e.kind === "chan_error").map(e => e.reason),
        join_replies: joins.map(j => ({status: j.status, join_ref: j.join_ref, response: j.response})),
        rejoined: joins.length >= 2 && joins[joins.length - 1].status === "ok" && new Set(refs).size === refs.length,
      }
    },
  },

  // args: topic, params_a, params_b, join_params_a, join_params_b. Socket a joins with Presence, then b;
  // a must see both metas; b disconnects; a must see b's meta leave.
  presence: {
    steps: a => [
      connectStep(Object.assign({}, a, {params: a.params_a || {}}), {socket: "a"}),
      {op: "join", socket: "a", channel: "a", topic: a.topic, params: a.join_params_a || {}, presence: true},
      {op: "wait", match: {kind: "presence_sync", channel: "a", meta_count: {$gte: 1}}, wait_ms: a.wait_ms},
      connectStep(Object.assign({}, a, {params: a.params_b || {}}), {socket: "b"}),
      {op: "join", socket: "b", channel: "b", topic: a.topic, params: a.join_params_b || {}, presence: true, mark: "b_join"},
      {op: "wait", match: {kind: "presence_sync", channel: "a", meta_count: 2}, since: "b_join", wait_ms: a.wait_ms},
      {op: "wait", match: {kind: "presence_sync", channel: "b", meta_count: 2}, wait_ms: a.wait_ms},
      {op: "disconnect", socket: "b", mark: "b_gone"},
      {op: "wait", match: {kind: "presence_sync", channel: "a", meta_count: 1}, since: "b_gone", wait_ms: a.wait_ms},
    ],
    summary: ev => {
      const syncs = ch => ev.filter(e => e.kind === "presence_sync" && e.channel === ch).map(e => ({t: e.t, keys: e.keys, meta_count: e.meta_count, list: e.list}))
      const sa = syncs("a")
      const both = sa.find(s => s.meta_count === 2)
      const refs = both ? both.list.flatMap(p => p.metas.map(m => m.phx_ref)) : []
      return {
        a_syncs: sa,
        b_syncs: syncs("b"),
        a_joins: ev.filter(e => e.kind === "presence_join" && e.channel === "a").map(e => ({key: e.key, metas: e.metas})),
        a_leaves: ev.filter(e => e.kind === "presence_leave" && e.channel === "a").map(e => ({key: e.key, metas: e.metas})),
        phx_refs_unique: refs.length === 2 && new Set(refs).size === 2,
        state_frames: frames(ev, e => e.kind === "recv" && e.event === "presence_state").map(e => Object.assign(pick(e), {socket: e.socket})),
        diff_frames: frames(ev, e => e.kind === "recv" && e.event === "presence_diff").map(e => Object.assign(pick(e), {socket: e.socket})),
      }
    },
  },

  // args: steps: [...] (see OPS), summary: none; read "events".
  script: {
    steps: a => {
      if(!Array.isArray(a.steps)){ throw new UsageError("script needs args.steps, a list of steps") }
      return a.steps
    },
    summary: () => ({}),
  },
}

function joinSummary(ev, ch){
  const reply = firstJoinReply(ev, ch)
  const sentJoins = frames(ev, e => e.kind === "send" && e.event === "phx_join")
  const first = sentJoins[0]
  const replyFrame = first ? replyFrameFor(ev, "s1", first.ref) : null
  const replyIdx = first ? ev.findIndex(e => e.kind === "recv" && e.ref === first.ref && e.event === "phx_reply") : -1
  return {
    status: reply ? reply.status : null,
    response: reply ? reply.response : null,
    join_ref: reply ? reply.join_ref : null,
    sent_frame: first ? first.frame : null,
    reply_frame: replyFrame,
    join_attempts: sentJoins.length,
    left: ev.some(e => e.kind === "leave_reply" && e.channel === ch),
    frames_after_reply: replyIdx >= 0 ? ev.slice(replyIdx + 1).filter(e => e.kind === "recv" && first && e.topic === first.topic).map(pick) : [],
  }
}

// ---------------------------------------------------------------------------------------------

async function main(argv){
  const [scenarioName, rawArgs] = argv
  const scenario = SCENARIOS[scenarioName]
  if(!scenario){
    throw new UsageError(`usage: node conformance.js <scenario> '<json-args>'; scenarios: ${Object.keys(SCENARIOS).join(", ")}`)
  }
  let args
  try { args = JSON.parse(rawArgs || "{}") } catch(e){ throw new UsageError(`json-args is not JSON: ${e.message}`) }
  const runner = new Runner(args)
  const steps = scenario.steps(args)
  const deadlineMs = args.deadline_ms || 20000
  let deadlineHit = false
  const deadline = new Promise(resolve => setTimeout(() => { deadlineHit = true; resolve({index: -1, op: "deadline", error: `deadline of ${deadlineMs} ms expired`}) }, deadlineMs))
  const failed = await Promise.race([runner.run(steps), deadline])
  runner.teardown()
  let summary
  try { summary = scenario.summary(runner.log.events, runner) } catch(e){ summary = {summary_error: e.stack} }
  const out = {
    ok: failed === null, scenario: scenarioName, failed_step: failed, summary,
    events: runner.log.events, events_dropped: runner.log.dropped, duration_ms: now(),
  }
  process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(deadlineHit ? 3 : 0))
}

main(process.argv.slice(2)).catch(e => {
  process.stderr.write(`conformance.js: ${e instanceof UsageError ? e.message : e.stack}\n`)
  process.exit(2)
})
