#!/usr/bin/env node
// One device on its `user:` topic, driven line by line: the stock phoenix.js way of catching up.
//
//   node device.js '{"url": "ws://127.0.0.1:PORT/socket", "token": "...", "topic": "user:alice", "mode": "fn"}'
//
// mode "fn": the channel params are a FUNCTION, `() => lastSeq === null ? {} : {last_seq: lastSeq}`,
// evaluated by phoenix.js at every (re)join, where lastSeq is the `inbox_seq` of the last
// `new_message` this client received (what stock clients do).
// mode "cursor": the params are `{}` at every join; the server starts from the device's stored
// cursor (moved with `ack`).
//
// stdin, one JSON command a line:  {"op": "disconnect"} | {"op": "connect"} | {"op": "ack", "seq": n} | {"op": "exit"}
// stdout, one JSON event a line:
//   {"ev": "ready"}
//   {"ev": "sent_join", "payload": {...}}           every phx_join frame written (its evaluated params)
//   {"ev": "join", "status": "ok"|"error"|"timeout", "response": {...}, "join_ref": "..."}
//   {"ev": "msg", "inbox_seq", "id", "conversation_id", "seq"}   every new_message the channel accepted
//   {"ev": "disconnected"} | {"ev": "open"} | {"ev": "close", "code"} | {"ev": "ack", "status", "seq"}
"use strict"

const path = require("node:path")
const {createRequire} = require("node:module")
const readline = require("node:readline")

// phoenix and ws are installed once, for the conformance harness (tests/js)
const jsRequire = createRequire(path.join(__dirname, "..", "..", "js", "package.json"))
const WebSocket = jsRequire("ws")
const {Socket} = jsRequire("phoenix")

const out = obj => process.stdout.write(JSON.stringify(obj) + "\n")

const args = JSON.parse(process.argv[2])
let lastSeq = null

class Transport extends WebSocket {
  constructor(url, protocols){ super(url, protocols) }
  send(data, ...rest){
    if(typeof data === "string"){
      const frame = JSON.parse(data)
      if(Array.isArray(frame) && frame[3] === "phx_join"){ out({ev: "sent_join", payload: frame[4]}) }
    }
    return super.send(data, ...rest)
  }
}

const socket = new Socket(args.url, {
  transport: Transport,
  params: {token: args.token},
  reconnectAfterMs: () => args.reconnect_ms || 50,
  rejoinAfterMs: () => args.rejoin_ms || 200,
  heartbeatIntervalMs: 30000,
})
socket.onOpen(() => out({ev: "open"}))
socket.onClose(ev => out({ev: "close", code: ev.code}))

const params = args.mode === "fn" ? () => (lastSeq === null ? {} : {last_seq: lastSeq}) : () => ({})
const channel = socket.channel(args.topic, params)
channel.on("new_message", m => {
  lastSeq = m.inbox_seq
  out({ev: "msg", inbox_seq: m.inbox_seq, id: m.id, conversation_id: m.conversation_id, seq: m.seq})
})
const join = channel.join()
for(const status of ["ok", "error", "timeout"]){
  join.receive(status, response => out({ev: "join", status, response: response === undefined ? null : response, join_ref: channel.joinRef()}))
}
socket.connect()
out({ev: "ready"})

const rl = readline.createInterface({input: process.stdin})
rl.on("line", line => {
  const cmd = JSON.parse(line)
  if(cmd.op === "disconnect"){
    socket.disconnect(() => out({ev: "disconnected"}))
  } else if(cmd.op === "connect"){
    socket.connect()  // the channel, errored by the disconnect, rejoins on open with params() evaluated again
  } else if(cmd.op === "ack"){
    channel.push("ack", {seq: cmd.seq})
      .receive("ok", () => out({ev: "ack", status: "ok", seq: cmd.seq}))
      .receive("error", r => out({ev: "ack", status: "error", seq: cmd.seq, response: r}))
      .receive("timeout", () => out({ev: "ack", status: "timeout", seq: cmd.seq}))
  } else if(cmd.op === "exit"){
    socket.disconnect(() => process.stdout.write("", () => process.exit(0)))
  } else {
    process.stderr.write(`device.js: unknown op ${cmd.op}\n`)
    process.exit(2)
  }
})
rl.on("close", () => process.exit(0))
