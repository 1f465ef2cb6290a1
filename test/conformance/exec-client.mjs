// A minimal client for GET /instances/{id}/exec (WebSocket), written from
// the reference's framing (hypeman-api.md 5.3), not from the server: the
// SDK 0.28.0 has no exec helper in TypeScript.
//
//   client -> server: TEXT start request JSON, then BINARY stdin frames,
//                     TEXT {"resize":{"rows":R,"cols":C}} (tty)
//   server -> client: BINARY output (stdout and stderr merged), then one
//                     TEXT {"exitCode":N}, then the socket closes.
//
// Both openExec and exec record every frame the server sends, so callers
// can check the framing itself and not only the decoded result.

import WebSocket from 'ws';

// wsURL is the exec (or other WebSocket) endpoint of instance id.
export function wsURL(baseURL, id, endpoint = 'exec') {
  const url = new URL(baseURL);
  const base = url.pathname.replace(/\/$/, '');
  url.pathname = `${base}/instances/${encodeURIComponent(id)}/${endpoint}`;
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.toString();
}

// HandshakeError: the server answered the upgrade request with a plain
// HTTP response. status and body (text) are what it sent.
export class HandshakeError extends Error {
  constructor(status, body) {
    super(`WebSocket handshake refused: ${status} ${body}`);
    this.status = status;
    this.body = body;
  }
}

// openExec connects and resolves with a session once the upgrade is done;
// a refused upgrade rejects with HandshakeError. The session records the
// frames the server sends:
//   session.frames  [{binary: bool, data: Buffer}] in arrival order
//   session.closed  a promise of {code, reason} that settles on close
//   session.send(data, binary)  sends one frame
//   session.waitFor(pred, ms)   resolves when pred(frames) is true
export function openExec(baseURL, apiKey, id, { endpoint = 'exec', timeoutMs = 10_000 } = {}) {
  const ws = new WebSocket(wsURL(baseURL, id, endpoint), {
    headers: { Authorization: `Bearer ${apiKey}` },
    handshakeTimeout: timeoutMs,
  });
  const frames = [];
  const waiters = new Set();
  const notify = () => {
    for (const w of waiters) w();
  };
  let closeInfo = null;
  const closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      closeInfo = { code, reason: reason.toString() };
      resolve(closeInfo);
      notify();
    });
  });
  ws.on('message', (data, isBinary) => {
    frames.push({ binary: isBinary, data: Buffer.from(data) });
    notify();
  });
  const session = {
    ws,
    frames,
    closed,
    send(data, binary) {
      ws.send(data, { binary });
    },
    // waitFor resolves with frames once pred(frames) holds; it rejects if
    // the socket closes first or ms pass.
    waitFor(pred, ms = 60_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out after ${ms} ms; frames so far: ${describe(frames)}`));
        }, ms);
        function check() {
          if (pred(frames)) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve(frames);
          } else if (closeInfo) {
            clearTimeout(timer);
            waiters.delete(check);
            reject(new Error(`socket closed (${closeInfo.code}) first; frames: ${describe(frames)}`));
          }
        }
        waiters.add(check);
        check();
      });
    },
    close() {
      ws.terminate();
    },
  };
  return new Promise((resolve, reject) => {
    ws.on('unexpected-response', (req, res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        reject(new HandshakeError(res.statusCode, Buffer.concat(chunks).toString()));
        req.destroy();
      });
    });
    ws.on('open', () => resolve(session));
    ws.on('error', (err) => reject(err));
  });
}

// describe renders frames for an assertion message.
export function describe(frames) {
  return frames
    .map((f) => (f.binary ? `BINARY ${JSON.stringify(f.data.toString())}` : `TEXT ${f.data.toString()}`))
    .join(' | ');
}

// exitFrame is the parsed exit control frame, once a TEXT frame that
// carries exitCode has arrived.
function exitFrame(frames) {
  for (const f of frames) {
    if (f.binary) continue;
    try {
      const m = JSON.parse(f.data.toString());
      if (m && typeof m === 'object' && 'exitCode' in m) return m;
    } catch {
      // not the exit frame
    }
  }
  return null;
}

// exec runs request (the first frame's JSON) and returns
// {output, exitCode, frames, exit, close}. stdin is a list of frames to
// send after the request: Buffers go as BINARY, strings as TEXT. With
// stdinEOF it then sends the server's {"stdin_eof":true} extension.
// onOutput {until, then}, if given: once the output so far contains the
// string until, then(session) is called (for a resize, or late stdin).
export async function exec(baseURL, apiKey, id, request, opts = {}) {
  const { stdin = [], stdinEOF = false, onOutput, timeoutMs = 120_000 } = opts;
  const s = await openExec(baseURL, apiKey, id);
  try {
    s.send(JSON.stringify(request), false);
    for (const chunk of stdin) s.send(chunk, Buffer.isBuffer(chunk));
    if (stdinEOF) s.send(JSON.stringify({ stdin_eof: true }), false);
    if (onOutput) {
      await s.waitFor((fr) => outputOf(fr).includes(onOutput.until), timeoutMs);
      await onOutput.then(s);
    }
    await s.waitFor((fr) => exitFrame(fr) !== null, timeoutMs);
    // The server closes after the exit frame.
    const close = await Promise.race([s.closed, new Promise((r) => setTimeout(() => r(null), 5000))]);
    const output = Buffer.concat(s.frames.filter((f) => f.binary).map((f) => f.data));
    const exit = exitFrame(s.frames);
    return { output, text: output.toString(), exitCode: exit.exitCode, exit, frames: s.frames, close };
  } finally {
    s.close();
  }
}

// outputOf is the BINARY frames' bytes as text.
function outputOf(frames) {
  return Buffer.concat(frames.filter((f) => f.binary).map((f) => f.data)).toString();
}
