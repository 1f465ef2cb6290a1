// SDK conformance suite: drives a running hypeman daemon with the official
// TypeScript SDK (@onkernel/hypeman, pinned in package.json) through every
// endpoint the server implements, success and error paths, and checks what
// the SDK sees: return values, error classes, status codes, error codes and
// retry behaviour.
//
// Environment:
//   HYPEMAN_BASE_URL  e.g. http://127.0.0.1:4973
//   HYPEMAN_API_KEY   a valid token for that daemon
//   HYPEMAN_IMAGE     a ready image on the daemon: the busybox demo image
//                     (its command prints "hello from hypeman demo", then
//                     runs httpd), e.g. 127.0.0.1:PORT/demo:latest
//
// The guest agent endpoints are driven too: exec with exec-client.mjs (the
// reference's WebSocket framing; the TS SDK has no exec helper), cp with the
// SDK's own lib/cp helpers, stat and stats with the client.
//
// Every instance it makes is named "sdk-<run>-..." so a caller can clean up
// after a failed run. Exit status: 0 when every check passed, 1 otherwise.
// Run: node test/conformance/conformance.mjs (after npm ci --prefix test/conformance)

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import Hypeman, {
  APIError,
  AuthenticationError,
  BadRequestError,
  ConflictError,
  InternalServerError,
  NotFoundError,
} from '@onkernel/hypeman';
import { cpFromInstance, cpToInstance } from '@onkernel/hypeman/lib/cp';

import { exec, HandshakeError, openExec } from './exec-client.mjs';

const baseURL = mustEnv('HYPEMAN_BASE_URL');
const apiKey = mustEnv('HYPEMAN_API_KEY');
const image = mustEnv('HYPEMAN_IMAGE');

function mustEnv(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`conformance: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

// ---------------------------------------------------------------- runner

const run = randomBytes(3).toString('hex'); // names: sdk-<run>-...
const prefix = `sdk-${run}`;
const checks = [];
let failed = 0;
let knownDiffs = 0;

// check registers a named step. Options: needs (names of steps that must
// have passed), known (a documented server difference: a failure is
// reported but does not fail the suite).
function check(name, fn, opts = {}) {
  checks.push({ name, fn, ...opts });
}

async function runAll() {
  const passed = new Set();
  for (const c of checks) {
    const missing = (c.needs ?? []).filter((n) => !passed.has(n));
    if (missing.length) {
      console.log(`SKIP ${c.name} (needs: ${missing.join(', ')})`);
      if (!c.known) failed++;
      continue;
    }
    const t0 = Date.now();
    try {
      await c.fn();
      passed.add(c.name);
      console.log(`ok   ${c.name} (${Date.now() - t0} ms)`);
      if (c.known) console.log(`     note: passes now; remove its "known" marker: ${c.known}`);
    } catch (err) {
      const detail = (err?.stack ?? String(err)).split('\n').slice(0, 8).join('\n     ');
      if (c.known) {
        knownDiffs++;
        console.log(`DIFF ${c.name} (known server difference: ${c.known})\n     ${detail}`);
      } else {
        failed++;
        console.log(`FAIL ${c.name} (${Date.now() - t0} ms)\n     ${detail}`);
      }
    }
  }
  console.log(`\n${checks.length} checks, ${failed} failed or skipped, ${knownDiffs} known server differences`);
}

// ---------------------------------------------------------------- clients

// Every request the clients make, for retry counting.
const requests = [];
async function recordingFetch(url, init) {
  const entry = { method: init?.method ?? 'GET', url: String(url), status: 0 };
  requests.push(entry);
  const res = await fetch(url, init);
  entry.status = res.status;
  return res;
}

function requestsSince(mark) {
  return requests.slice(mark);
}

const client = new Hypeman({ baseURL, apiKey, timeout: 30_000, fetch: recordingFetch });
// noRetry sees every error exactly as the server sent it.
const noRetry = client.withOptions({ maxRetries: 0 });
const badKey = new Hypeman({ baseURL, apiKey: 'not-a-jwt', maxRetries: 0, timeout: 10_000 });

const verbose = process.env.CONFORMANCE_VERBOSE === '1';
const BOOT_WAIT = '120s';
const BOOT_WAIT_MS = 150_000;

// ---------------------------------------------------------------- helpers

// expectError awaits p and checks that it failed with the SDK error class,
// HTTP status and (when given) error body code. It returns the error.
async function expectError(p, Class, status, code) {
  let err;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err, `expected ${Class.name} (${status}), but the call succeeded`);
  if (verbose) console.log(`     got ${err.status} ${JSON.stringify(err.error)}`);
  if (!(err instanceof Class)) {
    throw new assert.AssertionError({
      message: `expected ${Class.name} (${status}), got ${err?.constructor?.name}: ${err?.message}`,
    });
  }
  assert.equal(err.status, status, `status of ${err.message}`);
  assert.equal(typeof err.error, 'object', 'error body is a JSON object');
  assert.equal(typeof err.error.code, 'string', 'error body has a code');
  assert.equal(typeof err.error.message, 'string', 'error body has a message');
  if (code !== undefined) {
    const codes = Array.isArray(code) ? code : [code];
    assert.ok(codes.includes(err.error.code), `error code ${JSON.stringify(err.error.code)}, want ${codes.join(' or ')} (message: ${err.error.message})`);
  }
  return err;
}

async function collect(stream) {
  const out = [];
  for await (const item of stream) out.push(item);
  return out;
}

async function logs(id, query) {
  const stream = await client.instances.logs(id, query, { timeout: 20_000 });
  const lines = await collect(stream);
  for (const l of lines) assert.equal(typeof l, 'string', 'each log event is a JSON string');
  return lines;
}

// waitLog polls the app log until some line contains want.
async function waitLog(id, want, ms = 60_000) {
  const deadline = Date.now() + ms;
  let lines = [];
  while (Date.now() < deadline) {
    lines = await logs(id, { source: 'app', tail: 1000 });
    if (lines.some((l) => l.includes(want))) return lines;
    await sleep(250);
  }
  throw new Error(`app log never contained ${JSON.stringify(want)}; last lines:\n${lines.slice(-20).join('\n')}`);
}

async function waitRunning(id) {
  const w = await client.instances.wait(id, { state: 'Running', timeout: BOOT_WAIT }, { timeout: BOOT_WAIT_MS });
  assert.equal(w.timed_out, false, `timed out waiting for Running: ${JSON.stringify(w)}`);
  assert.equal(w.state, 'Running', `wait ended in ${w.state} (${w.state_error ?? ''})`);
  return w;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const isTime = (s) => typeof s === 'string' && !Number.isNaN(Date.parse(s)) && /^\d{4}-\d\d-\d\dT/.test(s);
const registryHost = image.slice(0, image.indexOf('/'));
// VAL is the code of request-validation errors (reference 1.3).
const VAL = 'Bad Request';

// ---------------------------------------------------------------- system

check('health.check', async () => {
  assert.deepEqual(await client.health.check(), { status: 'ok' });
});

check('health.check needs no valid key', async () => {
  assert.deepEqual(await badKey.health.check(), { status: 'ok' });
});

check('capabilities.get', async () => {
  const c = await client.capabilities.get();
  assert.equal(typeof c.server.version, 'string');
  assert.equal(c.server.api_version, '0.3.0');
  assert.equal(c.host.os, 'linux');
  assert.equal(typeof c.host.arch, 'string');
  const names = c.runtimes.map((r) => r.name);
  assert.deepEqual(names, [...names].sort(), 'runtimes sorted by name');
  for (const want of ['cloud-hypervisor', 'firecracker', 'qemu', 'qemu-microvm', 'vz']) {
    assert.ok(names.includes(want), `runtime ${want} listed`);
  }
  for (const r of c.runtimes) {
    assert.equal(r.available, r.name === 'qemu', `${r.name}.available`);
    assert.ok(Array.isArray(r.features), `${r.name}.features is an array`);
  }
  assert.equal(c.default_runtime.name, 'qemu');
  assert.equal(c.default_runtime.available, true);
  assert.ok(['bridge', 'nat'].includes(c.network.model));
  assert.equal(typeof c.network.guest_to_guest, 'boolean');
  assert.ok(c.images.platforms.includes(c.images.default_platform));
  for (const f of ['instances', 'images', 'logs']) assert.ok(c.features.includes(f), `feature ${f}`);
});

// ---------------------------------------------------------------- auth

check('wrong API key is 401 AuthenticationError', async () => {
  const err = await expectError(badKey.instances.list(), AuthenticationError, 401, 'Unauthorized');
  assert.match(err.error.message, /invalid token/);
});

check('no Authorization header is 401 AuthenticationError', async () => {
  const err = await expectError(
    noRetry.instances.list({}, { headers: { Authorization: null } }),
    AuthenticationError, 401, 'Unauthorized',
  );
  assert.match(err.error.message, /authorization header required/);
});

check('non-bearer Authorization header is 401', async () => {
  await expectError(
    noRetry.images.list({}, { headers: { Authorization: 'Basic Zm9vOmJhcg==' } }),
    AuthenticationError, 401, 'Unauthorized',
  );
});

// ---------------------------------------------------------------- images

let demo; // the demo image, from images.get

check('images.get with a /-containing name (sent as %2F)', async () => {
  const mark = requests.length;
  demo = await client.images.get(image);
  const sent = requestsSince(mark)[0].url;
  assert.ok(sent.includes('%2F'), `SDK encoded the name: ${sent}`);
  assert.equal(demo.name, image);
  assert.match(demo.digest, /^sha256:[0-9a-f]{64}$/);
  assert.equal(demo.status, 'ready');
  assert.ok(isTime(demo.created_at), 'created_at is a timestamp');
  assert.equal(typeof demo.size_bytes, 'number');
  assert.ok(demo.size_bytes > 0);
  assert.equal(demo.queue_position ?? null, null);
  assert.deepEqual(demo.cmd, ['/bin/sh', '-c', 'echo hello from hypeman demo; exec httpd -f -p 80 -h /www']);
});

check('images.get by repo@digest', async () => {
  const repo = image.slice(0, image.lastIndexOf(':'));
  const img = await client.images.get(`${repo}@${demo.digest}`);
  assert.equal(img.digest, demo.digest);
}, { needs: ['images.get with a /-containing name (sent as %2F)'] });

check('images.list includes the demo image', async () => {
  const list = await client.images.list();
  assert.ok(Array.isArray(list));
  const found = list.find((i) => i.name === image);
  assert.ok(found, `${image} in ${list.map((i) => i.name).join(', ')}`);
  assert.equal(found.digest, demo.digest);
  assert.deepEqual(await client.images.list({ tags: { [`${prefix}-none`]: 'x' } }), [], 'tag filter');
}, { needs: ['images.get with a /-containing name (sent as %2F)'] });

check('images.create is 202 and idempotent', async () => {
  for (let i = 0; i < 2; i++) {
    const { data, response } = await client.images.create({ name: image }).withResponse();
    assert.equal(response.status, 202);
    assert.equal(data.name, image);
    assert.equal(data.digest, demo.digest, 'same digest every time');
    assert.equal(data.status, 'ready', 'a ready image stays ready');
    assert.equal(data.queue_position ?? null, null);
  }
}, { needs: ['images.get with a /-containing name (sent as %2F)'] });

check('images.create of an invalid reference is 400 invalid_name', async () => {
  await expectError(noRetry.images.create({ name: 'invalid::' }), BadRequestError, 400, 'invalid_name');
});

check('images.create of a missing repository is 404 not_found', async () => {
  await expectError(
    noRetry.images.create({ name: `${registryHost}/${prefix}-missing:latest` }),
    NotFoundError, 404, 'not_found',
  );
});

check('images.get of an unknown image is 404 not_found', async () => {
  await expectError(noRetry.images.get(`${registryHost}/${prefix}-missing:latest`), NotFoundError, 404, 'not_found');
});

check('images.get of an invalid reference is 400 invalid_name', async () => {
  await expectError(noRetry.images.get('has spaces'), BadRequestError, 400, 'invalid_name');
});

const tagged = `${registryHost}/${prefix}-tagged:v1`;

check('images.tag points a new tag at the image', async () => {
  const { data, response } = await client.images.tag(image, { target: tagged }).withResponse();
  assert.ok(response.status === 200 || response.status === 201, `status ${response.status}`);
  assert.equal(data.name, tagged);
  assert.equal(data.digest, demo.digest);
  assert.equal(data.status, 'ready');
  const got = await client.images.get(tagged);
  assert.equal(got.digest, demo.digest);
  assert.ok((await client.images.list()).some((i) => i.name === tagged), 'tag listed');
}, { needs: ['images.get with a /-containing name (sent as %2F)'] });

check('images.tag of an unknown source is 404', async () => {
  await expectError(
    noRetry.images.tag(`${registryHost}/${prefix}-missing:latest`, { target: `${registryHost}/${prefix}-x:v1` }),
    NotFoundError, 404, 'not_found',
  );
});

check('images.tag without a target is 400', async () => {
  await expectError(noRetry.images.tag(image, {}), BadRequestError, 400, VAL);
});

check('images.delete removes only the tag (204)', async () => {
  const res = await client.images.delete(tagged).asResponse();
  assert.equal(res.status, 204);
  await expectError(noRetry.images.get(tagged), NotFoundError, 404, 'not_found');
  const still = await client.images.get(image);
  assert.equal(still.digest, demo.digest, 'the source tag is untouched');
}, { needs: ['images.tag points a new tag at the image'] });

check('images.delete of an unknown image is 404', async () => {
  await expectError(noRetry.images.delete(`${registryHost}/${prefix}-missing:latest`), NotFoundError, 404, 'not_found');
});

// ---------------------------------------------------------------- instances: create

const mainName = `${prefix}-main`;
const greeting = `hi from sdk ${run}`;
const tags = { run: prefix, role: 'main' };
let main; // the Instance returned by create

check('instances.create (201, env, tags, entrypoint/cmd)', async () => {
  const { data, response } = await client.instances
    .create(
      {
        name: mainName,
        image,
        env: { GREETING: greeting },
        tags,
        entrypoint: ['/bin/sh', '-c'],
        cmd: ['echo greeting=$GREETING; echo hello from hypeman demo; exec httpd -f -p 80 -h /www'],
      },
      { timeout: BOOT_WAIT_MS, maxRetries: 0 },
    )
    .withResponse();
  main = data;
  assert.equal(response.status, 201);
  assert.match(main.id, /^[a-z0-9]{24}$/, 'CUID2 id');
  assert.equal(main.name, mainName);
  assert.equal(main.image, image);
  assert.ok(['Initializing', 'Running'].includes(main.state), `state ${main.state}`);
  assert.ok(isTime(main.created_at));
  assert.ok('expires_at' in main && main.expires_at === null, 'expires_at is present and null');
  assert.deepEqual(main.env, { GREETING: greeting });
  assert.deepEqual(main.tags, tags);
  assert.equal(main.hypervisor, 'qemu');
  assert.equal(main.vcpus, 2);
  assert.equal(main.size, '1024.0 MB');
  assert.equal(main.overlay_size, '10.0 GB');
  assert.equal(main.network.enabled, true);
  assert.equal(main.network.name, 'default');
  assert.match(main.network.ip ?? '', /^\d+\.\d+\.\d+\.\d+$/);
  assert.match(main.network.mac ?? '', /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
  assert.equal(main.exit_code ?? null, null);
});
const MAIN = ['instances.create (201, env, tags, entrypoint/cmd)'];

// Error cases that need no VM run while the main instance boots.

check('instances.create with a bad name is 400 BadRequestError', async () => {
  await expectError(noRetry.instances.create({ name: 'Bad_Name', image }), BadRequestError, 400, VAL);
  await expectError(noRetry.instances.create({ name: '-dash', image }), BadRequestError, 400, VAL);
  await expectError(noRetry.instances.create({ name: 'x'.repeat(64), image }), BadRequestError, 400, VAL);
});

check('instances.create without an image is 400', async () => {
  await expectError(noRetry.instances.create({ name: `${prefix}-noimage` }), BadRequestError, 400, VAL);
});

check('instances.create with a duplicate name is rejected (name_conflict)', async () => {
  // The reference lists 400 (upstream handler) and 409 (spec); this server
  // answers 409 with x-should-retry: false.
  const mark = requests.length;
  let err;
  try {
    await client.instances.create({ name: mainName, image }, { timeout: 20_000 });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof APIError, `got ${err}`);
  if (verbose) console.log(`     got ${err.status} ${JSON.stringify(err.error)}`);
  assert.ok([400, 409].includes(err.status), `status ${err.status}`);
  assert.ok(['name_conflict', 'already_exists'].includes(err.error.code), `code ${err.error.code}`);
  if (err.status === 409) assert.equal(requestsSince(mark).length, 1, 'a 409 is not retried');
}, { needs: MAIN });

check('instances.create with a missing image repository is 404 not_found', async () => {
  await expectError(
    noRetry.instances.create({ name: `${prefix}-noimg`, image: `${registryHost}/${prefix}-missing:latest` }, { timeout: 30_000 }),
    NotFoundError, 404, 'not_found',
  );
});

check('instances.create with an unreachable registry is a documented 4xx', async () => {
  // The reference documents 404 not_found (image) and 400 codes for
  // POST /instances, no 503; and the SDK retries any 5xx twice.
  let err;
  try {
    await noRetry.instances.create({ name: `${prefix}-unreach`, image: '127.0.0.1:1/nope:latest' }, { timeout: 30_000 });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof APIError, `got ${err}`);
  if (verbose) console.log(`     got ${err.status} ${JSON.stringify(err.error)}`);
  assert.equal(err.status, 404, `status ${err.status}: ${err.message}`);
  assert.equal(err.error.code, 'not_found');
  assert.match(err.error.message, /cannot be reached/);
});

check('instances.create with vcpus 512 is 400', async () => {
  await expectError(noRetry.instances.create({ name: `${prefix}-cpus`, image, vcpus: 512 }), BadRequestError, 400, ['invalid_request', VAL]);
});

check('instances.create with an oversized memory size is 400 invalid_size', async () => {
  await expectError(noRetry.instances.create({ name: `${prefix}-mem`, image, size: '100TB' }), BadRequestError, 400, 'invalid_size');
});

check('instances.create with an invalid size string is 400 invalid_size', async () => {
  await expectError(noRetry.instances.create({ name: `${prefix}-mem`, image, size: 'lots' }), BadRequestError, 400, 'invalid_size');
});

check('instances.create with hypervisor firecracker is 400 naming what is missing', async () => {
  const err = await expectError(
    noRetry.instances.create({ name: `${prefix}-fc`, image, hypervisor: 'firecracker' }),
    BadRequestError, 400,
  );
  assert.match(err.error.message, /firecracker/);
  assert.match(err.error.message, /not installed|not available|KVM/);
});

check('instances.create with an unknown hypervisor is 400', async () => {
  await expectError(noRetry.instances.create({ name: `${prefix}-hv`, image, hypervisor: 'bogus' }), BadRequestError, 400, VAL);
});

check('instances.create with an invalid platform is 400 invalid_platform', async () => {
  await expectError(
    noRetry.instances.create({ name: `${prefix}-plat`, image, platform: 'linux/arm64' }),
    BadRequestError, 400, 'invalid_platform',
  );
});

check('instances.get of an unknown id is 404 NotFoundError not_found', async () => {
  await expectError(noRetry.instances.get('zzzzzzzzzzzzzzzzzzzzzzzz'), NotFoundError, 404, 'not_found');
  await expectError(noRetry.instances.get(`${prefix}-nosuch`), NotFoundError, 404, 'not_found');
});

check('instance operations on an unknown id are 404', async () => {
  const id = 'zzzzzzzzzzzzzzzzzzzzzzzz';
  await expectError(noRetry.instances.stop(id), NotFoundError, 404, 'not_found');
  await expectError(noRetry.instances.start(id, {}), NotFoundError, 404, 'not_found');
  await expectError(noRetry.instances.delete(id), NotFoundError, 404, 'not_found');
  await expectError(noRetry.instances.wait(id, { state: 'Running', timeout: '1s' }), NotFoundError, 404, 'not_found');
  await expectError(noRetry.instances.logs(id), NotFoundError, 404, 'not_found');
});

check('unimplemented endpoints reach the SDK as 501 not_implemented', async () => {
  await expectError(noRetry.volumes.list(), InternalServerError, 501, 'not_implemented');
});

check('a 501 is not retried by the SDK', async () => {
  // A deterministic 501 retried twice costs about 1.5 s of backoff per call.
  const mark = requests.length;
  await expectError(client.volumes.list(), InternalServerError, 501, 'not_implemented');
  assert.equal(requestsSince(mark).length, 1, 'requests sent for one call');
});

// ---------------------------------------------------------------- instances: running

check('instances.get by id, by name and by unique id prefix', async () => {
  for (const ref of [main.id, mainName, main.id.slice(0, 12)]) {
    const got = await client.instances.get(ref);
    assert.equal(got.id, main.id, `resolve ${ref}`);
    assert.equal(got.name, mainName);
  }
}, { needs: MAIN });

check('instances.wait for Running', async () => {
  await waitRunning(main.id);
  const got = await client.instances.get(main.id);
  assert.equal(got.state, 'Running');
  assert.ok(isTime(got.started_at), 'started_at set');
}, { needs: MAIN });
const RUNNING = [...MAIN, 'instances.wait for Running'];

check('instances.wait returns at once when already Running', async () => {
  const t0 = Date.now();
  const w = await client.instances.wait(main.id, { state: 'Running', timeout: '30s' });
  assert.deepEqual({ state: w.state, timed_out: w.timed_out }, { state: 'Running', timed_out: false });
  assert.ok(Date.now() - t0 < 5000, 'no long poll');
}, { needs: RUNNING });

check('instances.wait times out with 200 timed_out:true', async () => {
  const w = await client.instances.wait(main.id, { state: 'Stopped', timeout: '1s' }, { timeout: 20_000 });
  assert.equal(w.timed_out, true);
  assert.equal(w.state, 'Running');
}, { needs: RUNNING });

check('instances.wait with state Unknown is 400 invalid_state', async () => {
  await expectError(noRetry.instances.wait(main.id, { state: 'Unknown' }), BadRequestError, 400, 'invalid_state');
}, { needs: MAIN });

check('instances.wait with a bad timeout is 400 invalid_timeout', async () => {
  await expectError(noRetry.instances.wait(main.id, { state: 'Running', timeout: 'soon' }), BadRequestError, 400, 'invalid_timeout');
  await expectError(noRetry.instances.wait(main.id, { state: 'Running', timeout: '0s' }), BadRequestError, 400, 'invalid_timeout');
}, { needs: MAIN });

check('instances.list with state and tags filters', async () => {
  const all = await client.instances.list();
  assert.ok(all.some((i) => i.id === main.id), 'unfiltered list has it');
  const ids = (l) => l.map((i) => i.id);
  assert.deepEqual(ids(await client.instances.list({ tags: { run: prefix } })), [main.id]);
  assert.deepEqual(ids(await client.instances.list({ tags: { run: prefix, role: 'main' } })), [main.id]);
  assert.deepEqual(ids(await client.instances.list({ tags: { run: prefix, role: 'other' } })), [], 'tags are ANDed');
  assert.deepEqual(ids(await client.instances.list({ state: 'Running', tags: { run: prefix } })), [main.id]);
  assert.deepEqual(ids(await client.instances.list({ state: 'Stopped', tags: { run: prefix } })), []);
}, { needs: RUNNING });

check('instances.list with an invalid state is 400', async () => {
  await expectError(noRetry.instances.list({ state: 'Sleeping' }), BadRequestError, 400, VAL);
});

check('logs: app source has the program output and env', async () => {
  const lines = await waitLog(main.id, 'hello from hypeman demo');
  assert.ok(lines.some((l) => l.includes(`greeting=${greeting}`)), 'env reached the program');
  for (const l of lines) assert.ok(!l.includes('\n'), 'one line per event');
}, { needs: RUNNING });

check('logs: tail limits the backlog', async () => {
  const lines = await logs(main.id, { tail: 1 });
  assert.equal(lines.length, 1);
}, { needs: ['logs: app source has the program output and env'] });

check('logs: hypeman source has a create line', async () => {
  const lines = await logs(main.id, { source: 'hypeman', tail: 1000 });
  assert.ok(lines.some((l) => /create/.test(l)), `hypeman log:\n${lines.join('\n')}`);
}, { needs: MAIN });

check('logs: vmm source streams (or 404 log_not_found)', async () => {
  try {
    await logs(main.id, { source: 'vmm', tail: 10 });
  } catch (e) {
    if (!(e instanceof NotFoundError) || e.error?.code !== 'log_not_found') throw e;
  }
}, { needs: MAIN });

check('logs: follow=false ends the stream; follow=true keeps it open until aborted', async () => {
  // follow=false: collect() returns only because the server closed the stream.
  await logs(main.id, { tail: 5, follow: false });
  const stream = await client.instances.logs(main.id, { tail: 5, follow: true }, { timeout: 30_000 });
  const it = stream[Symbol.asyncIterator]();
  const first = await it.next();
  assert.equal(first.done, false);
  assert.equal(typeof first.value, 'string');
  const pending = (async () => {
    for (;;) {
      const r = await it.next();
      if (r.done) return 'ended';
    }
  })();
  const raced = await Promise.race([pending, sleep(1500).then(() => 'open')]);
  assert.equal(raced, 'open', 'a follow stream stays open');
  stream.controller.abort();
  assert.equal(await Promise.race([pending, sleep(5000).then(() => 'stuck')]), 'ended', 'abort ends iteration');
}, { needs: ['logs: app source has the program output and env'] });

check('logs: invalid source is 400', async () => {
  await expectError(noRetry.instances.logs(main.id, { source: 'kernel' }), BadRequestError, 400, VAL);
}, { needs: MAIN });

check('start while Running is 409 invalid_state, not retried', async () => {
  const mark = requests.length;
  // Default client: 2 retries for 409 unless the server says x-should-retry: false.
  const err = await expectError(client.instances.start(main.id, {}), ConflictError, 409, 'invalid_state');
  assert.match(err.error.message, /cannot start from state Running/);
  assert.equal(err.headers.get('x-should-retry'), 'false');
  const sent = requestsSince(mark);
  assert.equal(sent.length, 1, `requests sent: ${JSON.stringify(sent)}`);
}, { needs: RUNNING });

// ---------------------------------------------------------------- guest agent: exec, cp, stat, stats
//
// All on the main instance while it is Running (no extra boots). exec uses
// exec-client.mjs (the reference's framing: the TS SDK has no exec
// helper); cp uses the SDK's own lib/cp helpers, unmodified.

const cpCfg = { baseURL, apiKey };
const guestRoot = `/${prefix}`; // where cp writes in the guest
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
process.on('exit', () => fs.rmSync(tmpRoot, { recursive: true, force: true }));
const unknownId = 'zzzzzzzzzzzzzzzzzzzzzzzz';

const sh = (script, extra = {}) => ({ command: ['/bin/sh', '-c', script], ...extra });
const execMain = (req, opts) => exec(baseURL, apiKey, main.id, req, opts);

// assertExit checks the end of an exec session: exactly one TEXT frame,
// last, whose only key is exitCode (the Python SDK requires that), then the
// server closes the socket.
function assertExit(r, code, output) {
  const texts = r.frames.filter((f) => !f.binary);
  assert.equal(texts.length, 1, `one TEXT frame; frames: ${describeFrames(r.frames)}`);
  assert.equal(r.frames.at(-1), texts[0], 'the exit frame is the last frame');
  assert.deepEqual(Object.keys(r.exit), ['exitCode'], `exit frame ${texts[0].data}`);
  if (output !== undefined) assert.equal(r.text, output, 'output');
  assert.equal(r.exitCode, code, `exit code (output ${JSON.stringify(r.text)})`);
  assert.notEqual(r.close, null, 'the server closes the socket after the exit frame');
}

// expectHandshake awaits p (a WebSocket open) and checks that the server
// refused the upgrade with status and a JSON error body with code.
async function expectHandshake(p, status, code) {
  let err;
  try {
    const s = await p;
    s.close();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof HandshakeError, `expected a refused upgrade (${status}), got ${err ?? 'an open socket'}`);
  if (verbose) console.log(`     got ${err.status} ${err.body}`);
  assert.equal(err.status, status, err.message);
  const body = JSON.parse(err.body);
  assert.equal(typeof body.message, 'string', 'error body has a message');
  if (code !== undefined) assert.equal(body.code, code, err.body);
  return body;
}

// expectReject awaits p and checks that it rejected with a message
// matching re.
async function expectReject(p, re) {
  let err;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err, `expected a rejection matching ${re}, but it resolved`);
  if (verbose) console.log(`     got ${err.message}`);
  assert.match(String(err.message), re);
  return err;
}

function describeFrames(frames) {
  return frames
    .map((f) => (f.binary ? `BINARY(${f.data.length})` : `TEXT ${f.data.toString()}`))
    .join(' | ');
}

const sha = (b) => createHash('sha256').update(b).digest('hex');

// treeOf describes the tree at dir, keyed by path relative to dir's
// parent: {type, mode (octal), size, sha256}. With followFileLinks a
// symlink to a file counts as that file and a symlink to a directory is
// left out: what cpToInstance copies.
function treeOf(dir, { followFileLinks = false } = {}) {
  const out = {};
  const walk = (abs, rel) => {
    let st = fs.lstatSync(abs);
    if (st.isSymbolicLink()) {
      if (!followFileLinks) {
        out[rel] = { type: 'symlink', target: fs.readlinkSync(abs) };
        return;
      }
      st = fs.statSync(abs);
      if (st.isDirectory()) return;
    }
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isDirectory()) {
      out[rel] = { type: 'dir', mode };
      for (const name of fs.readdirSync(abs).sort()) walk(path.join(abs, name), `${rel}/${name}`);
    } else if (st.isFile()) {
      out[rel] = { type: 'file', mode, size: st.size, sha256: sha(fs.readFileSync(abs)) };
    } else {
      out[rel] = { type: 'other' };
    }
  };
  walk(dir, path.basename(dir));
  return out;
}

// sameTree compares got (a function returning a treeOf) with want. The
// SDK's cpFromInstance resolves on the final marker without waiting for
// the last file's write stream to flush (or even to be created), so retry
// briefly.
async function sameTree(got, want) {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      assert.deepEqual(got(), want);
      return;
    } catch (e) {
      if (Date.now() > deadline) throw e;
    }
    await sleep(100);
  }
}

// The local tree cpToInstance copies into the guest.
const localTree = path.join(tmpRoot, 'src', 'tree');
const jsonLike = {
  'data.json': '{"a":1}',
  // What cp.ts would take for its final marker, were it sent as a message.
  'end.json': '{"type":"end","final":true}',
  'array.json': '[1,2,3]',
};

function makeLocalTree() {
  const file = (rel, data, mode) => {
    const p = path.join(localTree, rel);
    fs.writeFileSync(p, data);
    fs.chmodSync(p, mode);
  };
  fs.mkdirSync(path.join(localTree, 'sub', 'deeper'), { recursive: true });
  file('big.bin', randomBytes(3 * 1024 * 1024 + 12345), 0o640);
  // Binary data dense in '{' and '[' bytes: frames of it start with them.
  const braces = randomBytes(512 * 1024);
  for (let i = 0; i < braces.length; i++) {
    if (braces[i] % 3 === 0) braces[i] = 0x7b;
    else if (braces[i] % 3 === 1) braces[i] = 0x5b;
  }
  file('braces.bin', braces, 0o644);
  file('data.json', jsonLike['data.json'], 0o600);
  file('end.json', jsonLike['end.json'], 0o644);
  file('array.json', jsonLike['array.json'], 0o644);
  file('empty', '', 0o644);
  file('sub/run.sh', '#!/bin/sh\necho run\n', 0o755);
  file('sub/deeper/note.txt', 'deep\n', 0o444);
  fs.symlinkSync('data.json', path.join(localTree, 'link.json')); // copied as content
  fs.symlinkSync('sub', path.join(localTree, 'dirlink')); // skipped by cpToInstance
  fs.chmodSync(path.join(localTree, 'sub', 'deeper'), 0o700);
  fs.chmodSync(path.join(localTree, 'sub'), 0o755);
  fs.chmodSync(localTree, 0o750);
}

check('exec: echo hi is "hi\\n", exit 0 (wait_for_agent)', async () => {
  const r = await execMain(sh('echo hi', { wait_for_agent: 60 }));
  assertExit(r, 0, 'hi\n');
}, { needs: RUNNING });
const EXEC = [...RUNNING, 'exec: echo hi is "hi\\n", exit 0 (wait_for_agent)'];

check('exec: exit 3 is exitCode 3', async () => {
  assertExit(await execMain(sh('exit 3')), 3, '');
  assertExit(await execMain(sh('echo fails; exit 3')), 3, 'fails\n');
}, { needs: EXEC });

check('exec: command is an argv, no shell', async () => {
  assertExit(await execMain({ command: ['echo', 'a  b', '$HOME', 'c'] }), 0, 'a  b $HOME c\n');
}, { needs: EXEC });

check('exec: stdout and stderr are merged into BINARY frames', async () => {
  const r = await execMain(sh('echo out; echo err >&2'));
  assertExit(r, 0);
  assert.deepEqual(r.text.split('\n').filter(Boolean).sort(), ['err', 'out'], JSON.stringify(r.text));
}, { needs: EXEC });

check('exec: stdin frames piped through cat, ended by {"stdin_eof":true}', async () => {
  const bulk = randomBytes(256 * 1024);
  const stdin = [
    Buffer.from('line one\n'),
    'text frame that is not a control message\n', // TEXT: stdin too
    '{"not":"control"}\n', // TEXT JSON that is neither resize nor stdin_eof: stdin
    Buffer.from('{"resize":{"rows":1,"cols":1}}\n'), // BINARY: always stdin
    Buffer.from('{"stdin_eof":true}\n'), // BINARY: stdin, not the end
    bulk,
  ];
  const want = Buffer.concat(stdin.map((c) => Buffer.from(c)));
  const r = await execMain({ command: ['cat'] }, { stdin, stdinEOF: true });
  assertExit(r, 0);
  assert.equal(r.output.length, want.length, 'bytes echoed');
  assert.ok(r.output.equals(want), 'cat echoed stdin byte for byte');
}, { needs: EXEC });

check('exec: no stdin_eof needed by a command that does not read stdin', async () => {
  // Reference 5.3: the protocol has no EOF message; a caller just waits.
  assertExit(await execMain(sh('echo x')), 0, 'x\n');
  assertExit(await execMain(sh('echo x'), { stdin: [Buffer.from('never read\n')] }), 0, 'x\n');
}, { needs: EXEC });

check('exec: tty sees rows/cols, then a {"resize"} frame', async () => {
  const r = await execMain(
    { command: ['/bin/sh', '-c', 'stty size; read x; stty size'], tty: true, rows: 30, cols: 100 },
    {
      onOutput: {
        until: '30 100',
        then: async (s) => {
          s.send(JSON.stringify({ resize: { rows: 40, cols: 120 } }), false);
          s.send(Buffer.from('\n'), true);
        },
      },
    },
  );
  assertExit(r, 0);
  assert.match(r.text, /^30 100\r\n/, 'initial size, with the tty\'s CRLF');
  assert.match(r.text, /40 120\r\n$/, 'size after the resize');
}, { needs: EXEC });

check('exec: env and cwd are honoured', async () => {
  const r = await execMain(sh('echo "$FOO|$BAR"; pwd', { env: { FOO: 'foo value', BAR: 'x=y' }, cwd: '/www' }));
  assertExit(r, 0, 'foo value|x=y\n/www\n');
}, { needs: EXEC });

check('exec: a missing program is "Error: ..." and exit 127', async () => {
  const r = await execMain({ command: [`/nonexistent-${run}`] });
  assertExit(r, 127);
  assert.match(r.text, /^Error: .*\r\n$/s, JSON.stringify(r.text));
}, { needs: EXEC });

check('exec: concurrent sessions each get their own output and exit code', async () => {
  const rs = await Promise.all(
    [0, 1, 2, 3, 4].map((i) => execMain(sh(`sleep 0.${i}; echo session-${i}; exit ${i}`))),
  );
  rs.forEach((r, i) => assertExit(r, i, `session-${i}\n`));
}, { needs: EXEC });

check('exec: timeout ends a command that runs too long', async () => {
  const t0 = Date.now();
  const r = await execMain({ command: ['sleep', '60'], timeout: 1 });
  assertExit(r, r.exitCode);
  assert.notEqual(r.exitCode, 0, `exit code ${r.exitCode}, output ${JSON.stringify(r.text)}`);
  assert.ok(Date.now() - t0 < 20_000, `took ${Date.now() - t0} ms`);
  if (verbose) console.log(`     exit ${r.exitCode} output ${JSON.stringify(r.text)}`);
}, { needs: EXEC });

check('exec: a BINARY first frame gets TEXT {"error"} and a close', async () => {
  for (const [frame, binary, re] of [
    [Buffer.from(JSON.stringify(sh('echo hi'))), true, /first message must be JSON text/],
    ['{not json', false, /invalid JSON/],
  ]) {
    const s = await openExec(baseURL, apiKey, main.id);
    try {
      s.send(frame, binary);
      const close = await Promise.race([s.closed, sleep(20_000).then(() => null)]);
      assert.notEqual(close, null, 'the server closed the socket');
      assert.equal(s.frames.length, 1, `frames: ${describeFrames(s.frames)}`);
      assert.equal(s.frames[0].binary, false, 'the error is a TEXT frame');
      const msg = JSON.parse(s.frames[0].data.toString());
      assert.deepEqual(Object.keys(msg), ['error']);
      assert.match(msg.error, re);
    } finally {
      s.close();
    }
  }
}, { needs: EXEC });

check('exec on an unknown instance: upgrade refused with 404 not_found', async () => {
  await expectHandshake(openExec(baseURL, apiKey, unknownId), 404, 'not_found');
});

check('exec with a wrong API key: upgrade refused with 401', async () => {
  await expectHandshake(openExec(baseURL, 'not-a-jwt', main.id), 401, 'Unauthorized');
}, { needs: MAIN });

check('cp: cpToInstance a tree in, cpFromInstance it back, byte for byte', async () => {
  process.umask(0o022); // the modes cpFromInstance creates are masked by it
  makeLocalTree();
  await cpToInstance(cpCfg, { instanceId: main.id, srcPath: localTree, dstPath: `${guestRoot}/tree` });
  const out = path.join(tmpRoot, 'out-tree');
  fs.mkdirSync(out);
  await cpFromInstance(cpCfg, { instanceId: main.id, srcPath: `${guestRoot}/tree`, dstPath: out });
  const want = treeOf(localTree, { followFileLinks: true });
  assert.equal(want['tree/link.json']?.sha256, sha(jsonLike['data.json']), 'a file symlink is copied as its target');
  assert.equal(want['tree/dirlink'], undefined, 'a directory symlink is skipped');
  await sameTree(() => treeOf(path.join(out, 'tree')), want);
}, { needs: EXEC });
const CP = [...EXEC, 'cp: cpToInstance a tree in, cpFromInstance it back, byte for byte'];

check('cp: cpFromInstance of single files (binary, JSON-looking, empty)', async () => {
  const out = path.join(tmpRoot, 'out-single');
  fs.mkdirSync(out);
  for (const name of ['big.bin', 'braces.bin', ...Object.keys(jsonLike), 'empty']) {
    await cpFromInstance(cpCfg, { instanceId: main.id, srcPath: `${guestRoot}/tree/${name}`, dstPath: out });
  }
  await sameTree(() => treeOf(out), {
    ...Object.fromEntries(Object.entries(treeOf(localTree)).filter(([k, v]) => v.type === 'file' && !k.includes('/sub/'))
      .map(([k, v]) => [k.replace(/^tree/, 'out-single'), v])),
    'out-single': { type: 'dir', mode: (fs.statSync(out).mode & 0o7777).toString(8) },
  });
}, { needs: CP });

check('cp: exec reads what cp wrote (output frames that start with "{")', async () => {
  assertExit(await execMain(sh(`cat ${guestRoot}/tree/data.json`)), 0, jsonLike['data.json']);
  assertExit(await execMain(sh(`cat ${guestRoot}/tree/link.json; test -L ${guestRoot}/tree/link.json || echo " regular"`)), 0, `${jsonLike['data.json']} regular\n`);
  assertExit(await execMain(sh(`test -e ${guestRoot}/tree/dirlink || echo absent`)), 0, 'absent\n');
  // 3 MB of binary output through exec frames.
  const r = await execMain({ command: ['cat', `${guestRoot}/tree/big.bin`] });
  assertExit(r, 0);
  assert.equal(r.output.length, fs.statSync(path.join(localTree, 'big.bin')).size, 'bytes of output');
  assert.equal(sha(r.output), sha(fs.readFileSync(path.join(localTree, 'big.bin'))), 'output byte for byte');
}, { needs: CP });

check('cp: cpFromInstance of a missing guest path rejects', async () => {
  const out = path.join(tmpRoot, 'out-missing');
  fs.mkdirSync(out);
  await expectReject(
    cpFromInstance(cpCfg, { instanceId: main.id, srcPath: `${guestRoot}/no-such-file`, dstPath: out }),
    /Copy error at/,
  );
}, { needs: EXEC });

check('cp: cpToInstance to an unknown instance rejects (404 upgrade)', async () => {
  const src = path.join(tmpRoot, 'one.txt');
  fs.writeFileSync(src, 'one\n');
  await expectReject(cpToInstance(cpCfg, { instanceId: unknownId, srcPath: src, dstPath: '/one.txt' }), /Unexpected server response: 404/);
  await expectReject(
    cpFromInstance(cpCfg, { instanceId: unknownId, srcPath: '/etc/hostname', dstPath: tmpRoot }),
    /Unexpected server response: 404/,
  );
});

check('instances.stat: a file, a directory, a missing path', async () => {
  const file = await client.instances.stat(main.id, { path: `${guestRoot}/tree/big.bin` });
  assert.deepEqual(
    { exists: file.exists, is_file: file.is_file, is_dir: file.is_dir, is_symlink: file.is_symlink, mode: file.mode, size: file.size },
    { exists: true, is_file: true, is_dir: false, is_symlink: false, mode: 0o640, size: 3 * 1024 * 1024 + 12345 },
  );
  assert.equal(file.error ?? null, null);
  const dir = await client.instances.stat(main.id, { path: `${guestRoot}/tree/sub/deeper`, follow_links: true });
  assert.equal(dir.exists, true);
  assert.equal(dir.is_dir, true);
  assert.equal(dir.is_file, false);
  assert.equal(dir.mode, 0o700);
  const missing = await client.instances.stat(main.id, { path: `${guestRoot}/tree/nope` });
  assert.equal(missing.exists, false);
  assert.equal(missing.error ?? null, null, 'a missing path is not an error');
  const skipped = await client.instances.stat(main.id, { path: `${guestRoot}/tree/dirlink` });
  assert.equal(skipped.exists, false, 'cpToInstance skipped the directory symlink');
}, { needs: CP });

check('instances.stat: a symlink with and without follow_links', async () => {
  const link = `${guestRoot}/tree/sym`;
  assertExit(await execMain({ command: ['ln', '-s', 'data.json', link] }), 0, '');
  const l = await client.instances.stat(main.id, { path: link, follow_links: false });
  assert.equal(l.exists, true);
  assert.equal(l.is_symlink, true);
  assert.equal(l.link_target, 'data.json');
  assert.equal(l.is_file, false);
  const f = await client.instances.stat(main.id, { path: link, follow_links: true });
  assert.equal(f.exists, true);
  assert.equal(f.is_file, true);
  assert.equal(f.size, jsonLike['data.json'].length);
  assert.equal(f.mode, 0o600);
  assert.equal(f.is_symlink ?? undefined, undefined, 'is_symlink is only set when follow_links=false');
}, { needs: CP });

check('cp: cpFromInstance brings a guest symlink back as a symlink, or followed', async () => {
  const out = path.join(tmpRoot, 'out-links');
  fs.mkdirSync(out);
  await cpFromInstance(cpCfg, { instanceId: main.id, srcPath: `${guestRoot}/tree/sym`, dstPath: out });
  assert.equal(fs.readlinkSync(path.join(out, 'sym')), 'data.json');
  const followed = path.join(tmpRoot, 'out-followed');
  fs.mkdirSync(followed);
  await cpFromInstance(cpCfg, { instanceId: main.id, srcPath: `${guestRoot}/tree/sym`, dstPath: followed, followLinks: true });
  await sameTree(() => treeOf(path.join(followed, 'sym')), {
    sym: { type: 'file', mode: '600', size: jsonLike['data.json'].length, sha256: sha(jsonLike['data.json']) },
  });
}, { needs: [...CP, 'instances.stat: a symlink with and without follow_links'] });

check('instances.stat without a path is 400', async () => {
  await expectError(noRetry.instances.stat(main.id, {}), BadRequestError, 400, VAL);
}, { needs: MAIN });

check('instances.stat of an unknown instance is 404', async () => {
  await expectError(noRetry.instances.stat(unknownId, { path: '/' }), NotFoundError, 404, 'not_found');
});

check('instances.stats of a Running instance', async () => {
  const st = await client.instances.stats(main.id);
  if (verbose) console.log(`     ${JSON.stringify(st)}`);
  assert.equal(st.instance_id, main.id);
  assert.equal(st.instance_name, mainName);
  for (const k of ['cpu_seconds', 'memory_rss_bytes', 'memory_vms_bytes', 'network_rx_bytes', 'network_tx_bytes', 'allocated_vcpus', 'allocated_memory_bytes']) {
    assert.equal(typeof st[k], 'number', `${k} is a number`);
    assert.ok(st[k] >= 0, `${k} >= 0`);
  }
  assert.ok(st.cpu_seconds > 0, `cpu_seconds ${st.cpu_seconds}`);
  assert.ok(st.memory_rss_bytes > 0, `memory_rss_bytes ${st.memory_rss_bytes}`);
  assert.ok(st.memory_vms_bytes >= st.memory_rss_bytes, 'vms >= rss');
  assert.equal(st.allocated_vcpus, main.vcpus);
  assert.ok(st.allocated_memory_bytes >= 1024 * 1024 * 1024, `allocated_memory_bytes ${st.allocated_memory_bytes}`);
  assert.equal(typeof st.memory_utilization_ratio, 'number');
  assert.ok(Math.abs(st.memory_utilization_ratio - st.memory_rss_bytes / st.allocated_memory_bytes) < 1e-6, 'ratio = rss / allocated');
}, { needs: RUNNING });

// ---------------------------------------------------------------- standby, restore, fork, snapshots
//
// Reference 2.3 (standby/restore/fork), 2.5, 2.6, 3.3-3.6, 4.6, 6.3, 6.4.
// All on the main instance while it is Running, and on forks resumed from
// its memory: no fresh boot here (restores and forks from memory take
// about a second each). Every fork is deleted before the stop section, so
// the checks there still see main alone under its tags.

const IPV4 = /^\d+\.\d+\.\d+\.\d+$/;
const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/;
const made = {}; // instances this section makes, by role
const snaps = {}; // snapshots this section makes, by role
let mainNet; // main's network before its standby
const snapName = `snap-${run}`; // used by two sources: unique per source only

// expectSnapshot checks a Snapshot object (reference 4.6).
function expectSnapshot(sn, { kind, source, name = '', tags, after }) {
  assert.match(sn.id, /^[a-z0-9]{24}$/, 'CUID2 id');
  assert.equal(sn.kind, kind);
  assert.equal(sn.source_instance_id, source.id);
  assert.equal(sn.source_instance_name, source.name);
  assert.equal(sn.source_hypervisor, 'qemu');
  assert.ok(isTime(sn.created_at), `created_at ${sn.created_at}`);
  if (after !== undefined) {
    const t = Date.parse(sn.created_at);
    assert.ok(t >= after - 2000 && t <= Date.now() + 2000, `created_at ${sn.created_at} is now`);
  }
  assert.equal(typeof sn.size_bytes, 'number');
  assert.ok(Number.isInteger(sn.size_bytes) && sn.size_bytes > 0, `size_bytes ${sn.size_bytes}`);
  assert.equal(sn.name, name, 'name ("" when unnamed)');
  if (tags !== undefined) assert.deepEqual(sn.tags ?? {}, tags);
}

// expectCopied checks what a fork copies from its source (reference 6.4
// rule 7) and what it gets new.
function expectCopied(fork, name) {
  assert.match(fork.id, /^[a-z0-9]{24}$/, 'CUID2 id');
  assert.notEqual(fork.id, main.id, 'its own id');
  assert.equal(fork.name, name);
  assert.equal(fork.image, image);
  assert.deepEqual(fork.env, { GREETING: greeting });
  assert.deepEqual(fork.tags, tags);
  assert.equal(fork.hypervisor, 'qemu');
  assert.equal(fork.vcpus, main.vcpus);
  assert.equal(fork.size, main.size);
  assert.ok(isTime(fork.created_at));
  assert.ok(Date.parse(fork.created_at) > Date.parse(main.created_at), 'created_at is the fork\'s');
  assert.equal(fork.exit_code ?? null, null);
}

// expectOwnIdentity checks that a Running instance made from main's
// memory has its own address and MAC (in the API) and its own hostname
// (in the guest), and that exec reaches it.
async function expectOwnIdentity(inst, name) {
  assert.equal(inst.state, 'Running', `state ${inst.state}`);
  assert.match(inst.network?.ip ?? '', IPV4, 'an IP');
  assert.match(inst.network?.mac ?? '', MAC, 'a MAC');
  assert.notEqual(inst.network.ip, mainNet.ip, 'an IP of its own');
  assert.notEqual(inst.network.mac, mainNet.mac, 'a MAC of its own');
  const r = await exec(baseURL, apiKey, inst.id, { command: ['hostname'], wait_for_agent: 30 });
  assertExit(r, 0, `${name}\n`);
}

async function deleteInstance(id) {
  const res = await client.instances.delete(id, { graceful_shutdown: false }).asResponse();
  assert.equal(res.status, 204);
}

// notRetried runs call with the retrying client and checks the SDK sent
// exactly one request: the server marked the error x-should-retry: false.
async function notRetried(call, Class, status, code) {
  const mark = requests.length;
  const err = await expectError(call(), Class, status, code);
  assert.equal(err.headers.get('x-should-retry'), 'false', 'x-should-retry: false');
  assert.equal(requestsSince(mark).length, 1, `requests sent: ${JSON.stringify(requestsSince(mark))}`);
  return err;
}

// -- standby and restore of main

check('instances.standby of a Running instance: 200, Standby, has_snapshot', async () => {
  mainNet = (await client.instances.get(main.id)).network;
  assert.match(mainNet.ip ?? '', IPV4);
  const { data, response } = await client.instances.standby(main.id, undefined, { maxRetries: 0, timeout: 60_000 }).withResponse();
  assert.equal(response.status, 200);
  assert.equal(data.id, main.id);
  assert.equal(data.state, 'Standby');
  assert.equal(data.has_snapshot, true);
  const got = await client.instances.get(main.id);
  assert.equal(got.state, 'Standby');
  assert.equal(got.has_snapshot, true);
  const w = await client.instances.wait(main.id, { state: 'Standby', timeout: '5s' });
  assert.deepEqual({ state: w.state, timed_out: w.timed_out }, { state: 'Standby', timed_out: false });
  const ids = (await client.instances.list({ state: 'Standby', tags: { run: prefix } })).map((i) => i.id);
  assert.deepEqual(ids, [main.id], 'list state=Standby');
}, { needs: RUNNING });
const STANDBY = [...RUNNING, 'instances.standby of a Running instance: 200, Standby, has_snapshot'];

check('standby of a Standby instance is 409 invalid_state, not retried', async () => {
  await notRetried(() => client.instances.standby(main.id), ConflictError, 409, 'invalid_state');
}, { needs: STANDBY });

check('exec and stat on a Standby instance are 409 invalid_state', async () => {
  const body = await expectHandshake(openExec(baseURL, apiKey, main.id), 409, 'invalid_state');
  assert.match(body.message, /current state: Standby/);
  const err = await expectError(noRetry.instances.stat(main.id, { path: '/' }), ConflictError, 409, 'invalid_state');
  assert.match(err.error.message, /current state: Standby/);
}, { needs: STANDBY });

check('fork of a Standby instance: 201, default target Standby, source untouched', async () => {
  const name = `${prefix}-fs`;
  const { data, response } = await client.instances.fork(main.id, { name }, { maxRetries: 0, timeout: 60_000 }).withResponse();
  made.fs = data;
  assert.equal(response.status, 201);
  expectCopied(data, name);
  assert.equal(data.state, 'Standby');
  assert.equal(data.has_snapshot, true);
  assert.equal((await client.instances.get(data.id)).state, 'Standby');
  assert.equal((await client.instances.get(main.id)).state, 'Standby', 'the source stays Standby');
}, { needs: STANDBY });
const FS = [...STANDBY, 'fork of a Standby instance: 201, default target Standby, source untouched'];

check('fork of a Standby instance with target_state Running: its own id, name, ip, mac, hostname', async () => {
  const name = `${prefix}-fsr`;
  const { data, response } = await client.instances
    .fork(main.id, { name, target_state: 'Running' }, { maxRetries: 0, timeout: BOOT_WAIT_MS })
    .withResponse();
  made.fsr = data;
  assert.equal(response.status, 201);
  expectCopied(data, name);
  await expectOwnIdentity(data, name);
  assert.equal((await client.instances.get(main.id)).state, 'Standby', 'the source stays Standby');
  await deleteInstance(data.id);
  delete made.fsr;
}, { needs: STANDBY });

check('fork of a Standby instance with target_state Stopped', async () => {
  const name = `${prefix}-fss`;
  const { data, response } = await client.instances
    .fork(main.id, { name, target_state: 'Stopped' }, { maxRetries: 0, timeout: 60_000 })
    .withResponse();
  made.fss = data;
  assert.equal(response.status, 201);
  expectCopied(data, name);
  assert.equal(data.state, 'Stopped');
  assert.equal(data.has_snapshot ?? false, false);
  assert.equal((await client.instances.get(data.id)).state, 'Stopped');
}, { needs: STANDBY });
const FSS = [...STANDBY, 'fork of a Standby instance with target_state Stopped'];

check('standby and restore of a Stopped instance are 409 invalid_state', async () => {
  const err = await expectError(noRetry.instances.standby(made.fss.id), ConflictError, 409, 'invalid_state');
  assert.match(err.error.message, /Stopped/);
  await expectError(noRetry.instances.restore(made.fss.id), ConflictError, 409, 'invalid_state');
  assert.equal((await client.instances.get(made.fss.id)).state, 'Stopped');
}, { needs: FSS });

check('snapshots.create kind Standby from a Standby instance (201; source stays Standby)', async () => {
  const t0 = Date.now();
  const { data, response } = await client.instances.snapshots
    .create(made.fs.id, { kind: 'Standby', name: snapName, tags: { run: prefix, snap: 'b' } }, { maxRetries: 0, timeout: 60_000 })
    .withResponse();
  snaps.b = data;
  assert.equal(response.status, 201);
  expectSnapshot(data, { kind: 'Standby', source: made.fs, name: snapName, tags: { run: prefix, snap: 'b' }, after: t0 });
  const got = await client.instances.get(made.fs.id);
  assert.equal(got.state, 'Standby');
  assert.equal(got.has_snapshot, true);
}, { needs: FS });
const SNAP_B = [...FS, 'snapshots.create kind Standby from a Standby instance (201; source stays Standby)'];

check('instances.restore of a Standby instance: 200, Running, same ip and mac', async () => {
  const { data, response } = await client.instances.restore(main.id, { maxRetries: 0, timeout: BOOT_WAIT_MS }).withResponse();
  assert.equal(response.status, 200);
  assert.equal(data.id, main.id);
  assert.ok(['Running', 'Initializing'].includes(data.state), `state ${data.state}`);
  assert.equal(data.has_snapshot ?? false, false, 'has_snapshot after restore');
  assert.equal(data.network.ip, mainNet.ip, 'same IP');
  assert.equal(data.network.mac, mainNet.mac, 'same MAC');
  await waitRunning(main.id);
  assertExit(await execMain({ command: ['hostname'], wait_for_agent: 30 }), 0, `${mainName}\n`);
  assertExit(await execMain(sh(`cat ${guestRoot}/tree/data.json`)), 0, jsonLike['data.json']);
}, { needs: STANDBY });
const RESTORED = [...STANDBY, 'instances.restore of a Standby instance: 200, Running, same ip and mac'];

check('restore of a Running instance is 409 invalid_state, not retried', async () => {
  await notRetried(() => client.instances.restore(main.id), ConflictError, 409, 'invalid_state');
}, { needs: RESTORED });

// -- fork

check('fork of a Running instance without from_running is 409 invalid_state', async () => {
  const err = await notRetried(() => client.instances.fork(main.id, { name: `${prefix}-nofr` }), ConflictError, 409, 'invalid_state');
  assert.match(err.error.message, /from_running/);
  await expectError(noRetry.instances.get(`${prefix}-nofr`), NotFoundError, 404, 'not_found');
}, { needs: RESTORED });

check('fork with from_running: 201, Running fork with its own identity, source still Running', async () => {
  const name = `${prefix}-fr`;
  const { data, response } = await client.instances
    .fork(main.id, { name, from_running: true }, { maxRetries: 0, timeout: BOOT_WAIT_MS })
    .withResponse();
  made.fr = data;
  assert.equal(response.status, 201);
  expectCopied(data, name);
  await expectOwnIdentity(data, name);
  if (verbose) {
    for (const id of [main.id, data.id]) console.log(`     ${(await logs(id, { source: 'hypeman', tail: 2 })).join('\n     ')}`);
  }
  const src = await client.instances.get(main.id);
  assert.equal(src.state, 'Running', 'the source stays Running');
  assert.equal(src.network.ip, mainNet.ip);
  assertExit(await execMain({ command: ['hostname'] }), 0, `${mainName}\n`);
  await deleteInstance(data.id);
  delete made.fr;
}, { needs: RESTORED });

check('fork with a taken name is 409 name_conflict, not retried', async () => {
  // A name the source has, and a name another fork has.
  await notRetried(() => client.instances.fork(main.id, { name: mainName, from_running: true }), ConflictError, 409, 'name_conflict');
  await notRetried(() => client.instances.fork(made.fss.id, { name: made.fs.name }), ConflictError, 409, 'name_conflict');
  assert.equal((await client.instances.get(main.id)).state, 'Running');
}, { needs: [...RESTORED, ...FS, ...FSS] });

check('fork with a bad name, or no name, is 400', async () => {
  for (const name of ['Bad_Name', '-dash', 'x'.repeat(64)]) {
    await expectError(noRetry.instances.fork(main.id, { name, from_running: true }), BadRequestError, 400, [VAL, 'invalid_request']);
  }
  await expectError(noRetry.instances.fork(main.id, { from_running: true }), BadRequestError, 400, [VAL, 'invalid_request']);
}, { needs: MAIN });

check('fork with a bad target_state is 400', async () => {
  for (const target_state of ['Paused', 'running', 'Unknown']) {
    await expectError(
      noRetry.instances.fork(main.id, { name: `${prefix}-bad`, from_running: true, target_state }),
      BadRequestError, 400, [VAL, 'invalid_request'],
    );
  }
}, { needs: MAIN });

check('fork of an unknown instance is 404 not_found', async () => {
  await expectError(noRetry.instances.fork(unknownId, { name: `${prefix}-orphan` }), NotFoundError, 404, 'not_found');
});

check('fork of a Stopped instance: 201, default target Stopped', async () => {
  const name = `${prefix}-fstop`;
  const { data, response } = await client.instances.fork(made.fss.id, { name }, { maxRetries: 0, timeout: 60_000 }).withResponse();
  made.fstop = data;
  assert.equal(response.status, 201);
  expectCopied(data, name);
  assert.notEqual(data.id, made.fss.id);
  assert.equal(data.state, 'Stopped');
  assert.equal((await client.instances.get(made.fss.id)).state, 'Stopped', 'the source stays Stopped');
  await deleteInstance(data.id);
  delete made.fstop;
}, { needs: FSS });

// -- stored snapshots

check('snapshots.create kind Standby from a Running instance (201; source stays Running)', async () => {
  const t0 = Date.now();
  const { data, response } = await client.instances.snapshots
    .create(main.id, { kind: 'Standby', name: snapName, tags: { run: prefix, snap: 'a' } }, { maxRetries: 0, timeout: 60_000 })
    .withResponse();
  snaps.a = data;
  assert.equal(response.status, 201);
  expectSnapshot(data, { kind: 'Standby', source: main, name: snapName, tags: { run: prefix, snap: 'a' }, after: t0 });
  assert.notEqual(data.id, snaps.b?.id);
  const got = await client.instances.get(main.id);
  assert.equal(got.state, 'Running', 'the source stays Running');
  assert.equal(got.has_snapshot ?? false, false, 'a stored snapshot is not the standby snapshot');
  assertExit(await execMain(sh('echo still here')), 0, 'still here\n');
}, { needs: RESTORED });
const SNAP_A = [...RESTORED, 'snapshots.create kind Standby from a Running instance (201; source stays Running)'];

check('snapshots.create kind Stopped from a Running instance is 409 conflict', async () => {
  const err = await notRetried(() => client.instances.snapshots.create(main.id, { kind: 'Stopped' }), ConflictError, 409, 'conflict');
  assert.match(err.error.message, /Stopped/);
}, { needs: RESTORED });

check('snapshots.create kind Stopped from a Stopped instance (unnamed: name "")', async () => {
  const t0 = Date.now();
  const { data, response } = await client.instances.snapshots
    .create(made.fss.id, { kind: 'Stopped' }, { maxRetries: 0, timeout: 60_000 })
    .withResponse();
  snaps.c = data;
  assert.equal(response.status, 201);
  expectSnapshot(data, { kind: 'Stopped', source: made.fss, name: '', tags: {}, after: t0 });
  assert.equal((await client.instances.get(made.fss.id)).state, 'Stopped');
}, { needs: FSS });
const SNAP_C = [...FSS, 'snapshots.create kind Stopped from a Stopped instance (unnamed: name "")'];

check('snapshots.create kind Standby from a Stopped instance is 409 conflict', async () => {
  await notRetried(() => client.instances.snapshots.create(made.fss.id, { kind: 'Standby' }), ConflictError, 409, 'conflict');
}, { needs: FSS });

check('snapshots.create: a name is unique per source (409 conflict), not across sources', async () => {
  await notRetried(
    () => client.instances.snapshots.create(main.id, { kind: 'Standby', name: snapName }),
    ConflictError, 409, 'conflict',
  );
  const { data, response } = await client.instances.snapshots
    .create(made.fss.id, { kind: 'Stopped', name: snapName }, { maxRetries: 0, timeout: 60_000 })
    .withResponse();
  snaps.d = data;
  assert.equal(response.status, 201);
  expectSnapshot(data, { kind: 'Stopped', source: made.fss, name: snapName });
}, { needs: [...SNAP_A, ...FSS] });
const SNAP_D = [...SNAP_A, ...FSS, 'snapshots.create: a name is unique per source (409 conflict), not across sources'];

check('snapshots.create with a bad kind or name is 400; on an unknown instance 404', async () => {
  await expectError(noRetry.instances.snapshots.create(main.id, { kind: 'Paused' }), BadRequestError, 400, [VAL, 'invalid_request']);
  await expectError(noRetry.instances.snapshots.create(main.id, {}), BadRequestError, 400, [VAL, 'invalid_request']);
  await expectError(
    noRetry.instances.snapshots.create(main.id, { kind: 'Standby', name: 'Bad_Name' }),
    BadRequestError, 400, [VAL, 'invalid_request'],
  );
  await expectError(noRetry.instances.snapshots.create(unknownId, { kind: 'Stopped' }), NotFoundError, 404, 'not_found');
}, { needs: MAIN });

check('snapshots.list with source_instance_id, kind, name and tags filters', async () => {
  const ours = new Set(Object.values(snaps).map((s) => s.id));
  const ids = async (q) => (await client.snapshots.list(q)).map((s) => s.id).filter((id) => ours.has(id)).sort();
  const want = (...ks) => ks.map((k) => snaps[k].id).sort();
  const all = await client.snapshots.list();
  assert.ok(Array.isArray(all));
  assert.deepEqual(all.map((s) => s.id).filter((id) => ours.has(id)).sort(), want('a', 'b', 'c', 'd'), 'unfiltered');
  const a = all.find((s) => s.id === snaps.a.id);
  assert.deepEqual(a, snaps.a, 'a listed snapshot is the created object');
  assert.deepEqual(await ids({ source_instance_id: main.id }), want('a'));
  assert.deepEqual(await ids({ source_instance_id: made.fss.id }), want('c', 'd'));
  assert.deepEqual(await ids({ source_instance_id: made.fss.id, kind: 'Stopped' }), want('c', 'd'));
  assert.deepEqual(await ids({ source_instance_id: made.fss.id, kind: 'Standby' }), []);
  assert.deepEqual(await ids({ kind: 'Standby' }), want('a', 'b'));
  assert.deepEqual(await ids({ name: snapName }), want('a', 'b', 'd'));
  assert.deepEqual(await ids({ name: snapName, kind: 'Stopped' }), want('d'));
  assert.deepEqual(await ids({ tags: { run: prefix } }), want('a', 'b'));
  assert.deepEqual(await ids({ tags: { run: prefix, snap: 'a' } }), want('a'), 'tags are ANDed');
  assert.deepEqual(await ids({ tags: { run: prefix, snap: 'zz' } }), []);
  assert.deepEqual(await client.snapshots.list({ source_instance_id: unknownId }), []);
  await expectError(noRetry.snapshots.list({ kind: 'Paused' }), BadRequestError, 400, VAL);
}, { needs: [...SNAP_B, ...SNAP_C, ...SNAP_D] });

check('snapshots.get returns the object; an unknown id is 404 not_found', async () => {
  assert.deepEqual(await client.snapshots.get(snaps.a.id), snaps.a);
  assert.deepEqual(await client.snapshots.get(snaps.c.id), snaps.c);
  await expectError(noRetry.snapshots.get(unknownId), NotFoundError, 404, 'not_found');
}, { needs: [...SNAP_A, ...SNAP_C] });

check('snapshots.fork of a Standby snapshot: 201, default Running, its own identity', async () => {
  const name = `${prefix}-sfa`;
  const { data, response } = await client.snapshots.fork(snaps.a.id, { name }, { maxRetries: 0, timeout: BOOT_WAIT_MS }).withResponse();
  made.sfa = data;
  assert.equal(response.status, 201);
  expectCopied(data, name);
  await expectOwnIdentity(data, name);
  assert.equal((await client.instances.get(main.id)).state, 'Running', 'the source is untouched');
  await deleteInstance(data.id);
  delete made.sfa;
}, { needs: SNAP_A });

check('snapshots.fork errors: bad name 400, taken name 409, Standby target of a Stopped snapshot 400, unknown 404', async () => {
  await expectError(noRetry.snapshots.fork(snaps.c.id, { name: 'Bad_Name' }), BadRequestError, 400, [VAL, 'invalid_request']);
  await expectError(noRetry.snapshots.fork(snaps.c.id, {}), BadRequestError, 400, [VAL, 'invalid_request']);
  await notRetried(() => client.snapshots.fork(snaps.c.id, { name: mainName }), ConflictError, 409, ['name_conflict', 'conflict']);
  const err = await expectError(
    noRetry.snapshots.fork(snaps.c.id, { name: `${prefix}-sfbad`, target_state: 'Standby' }),
    BadRequestError, 400, 'invalid_request',
  );
  assert.match(err.error.message, /Standby/);
  await expectError(
    noRetry.snapshots.fork(snaps.c.id, { name: `${prefix}-sfbad`, target_state: 'Paused' }),
    BadRequestError, 400, [VAL, 'invalid_request'],
  );
  await expectError(noRetry.snapshots.fork(unknownId, { name: `${prefix}-sfbad` }), NotFoundError, 404, 'not_found');
  await expectError(noRetry.instances.get(`${prefix}-sfbad`), NotFoundError, 404, 'not_found');
}, { needs: [...MAIN, ...SNAP_C] });

check('snapshots.restore on a Running source is 409 invalid_state', async () => {
  const err = await notRetried(() => client.instances.snapshots.restore(snaps.a.id, { id: main.id }), ConflictError, 409, 'invalid_state');
  assert.match(err.error.message, /Running/);
  assert.equal((await client.instances.get(main.id)).state, 'Running');
}, { needs: SNAP_A });

check('snapshots.restore of another instance\'s snapshot is 400', async () => {
  const err = await expectError(
    noRetry.instances.snapshots.restore(snaps.a.id, { id: made.fss.id }),
    BadRequestError, 400, 'invalid_request',
  );
  assert.match(err.error.message, /belongs to/);
  await expectError(noRetry.instances.snapshots.restore(unknownId, { id: made.fss.id }), NotFoundError, 404, 'not_found');
  await expectError(noRetry.instances.snapshots.restore(snaps.c.id, { id: unknownId }), NotFoundError, 404, 'not_found');
}, { needs: [...SNAP_A, ...SNAP_C] });

check('snapshots.restore of a Stopped snapshot in place: default and target_state Stopped', async () => {
  const fss = made.fss;
  for (const [sn, body] of [[snaps.c, {}], [snaps.d, { target_state: 'Stopped' }]]) {
    const { data, response } = await client.instances.snapshots
      .restore(sn.id, { id: fss.id, ...body }, { maxRetries: 0, timeout: 60_000 })
      .withResponse();
    assert.equal(response.status, 200);
    assert.equal(data.id, fss.id, 'keeps its id');
    assert.equal(data.name, fss.name, 'keeps its name');
    assert.equal(data.state, 'Stopped');
  }
  await expectError(
    noRetry.instances.snapshots.restore(snaps.c.id, { id: fss.id, target_state: 'Standby' }),
    BadRequestError, 400, 'invalid_request',
  );
  await expectError(
    noRetry.instances.snapshots.restore(snaps.c.id, { id: fss.id, target_hypervisor: 'firecracker' }),
    BadRequestError, 400, 'invalid_request',
  );
}, { needs: [...SNAP_C, ...SNAP_D] });

check('snapshots.restore of a Standby snapshot in place: target_state Standby, then Running with the instance\'s identity', async () => {
  const fs_ = made.fs;
  const sb = await client.instances.snapshots.restore(snaps.b.id, { id: fs_.id, target_state: 'Standby' }, { maxRetries: 0, timeout: 60_000 });
  assert.equal(sb.id, fs_.id);
  assert.equal(sb.state, 'Standby');
  assert.equal(sb.has_snapshot, true);
  const { data, response } = await client.instances.snapshots
    .restore(snaps.b.id, { id: fs_.id, target_state: 'Running' }, { maxRetries: 0, timeout: BOOT_WAIT_MS })
    .withResponse();
  assert.equal(response.status, 200);
  assert.equal(data.id, fs_.id, 'keeps its id');
  assert.equal(data.name, fs_.name, 'keeps its name');
  await expectOwnIdentity(data, fs_.name);
  await notRetried(() => client.instances.snapshots.restore(snaps.b.id, { id: fs_.id }), ConflictError, 409, 'invalid_state');
  await deleteInstance(fs_.id);
  delete made.fs;
}, { needs: SNAP_B });

check('snapshots outlive their source: snapshots.fork of a Stopped snapshot after the source is deleted (default Stopped)', async () => {
  await deleteInstance(made.fss.id);
  const source = made.fss;
  delete made.fss;
  assert.deepEqual(await client.snapshots.get(snaps.c.id), snaps.c);
  const name = `${prefix}-sfc`;
  const { data, response } = await client.snapshots.fork(snaps.c.id, { name }, { maxRetries: 0, timeout: 60_000 }).withResponse();
  made.sfc = data;
  assert.equal(response.status, 201);
  expectCopied(data, name);
  assert.notEqual(data.id, source.id);
  assert.equal(data.state, 'Stopped');
  assert.equal((await client.instances.get(data.id)).state, 'Stopped');
  await deleteInstance(data.id);
  delete made.sfc;
}, { needs: SNAP_C });

check('snapshots.delete: 204, then get and delete are 404', async () => {
  const res = await client.snapshots.delete(snaps.d.id).asResponse();
  assert.equal(res.status, 204);
  await expectError(noRetry.snapshots.get(snaps.d.id), NotFoundError, 404, 'not_found');
  await expectError(noRetry.snapshots.delete(snaps.d.id), NotFoundError, 404, 'not_found');
  assert.ok(!(await client.snapshots.list({ name: snapName })).some((s) => s.id === snaps.d.id), 'gone from the list');
  delete snaps.d;
}, { needs: SNAP_D });

check('cleanup: this section\'s snapshots and forks are deleted; main remains', async () => {
  // Runs whatever failed above: the stop section counts main alone.
  for (const s of await client.snapshots.list()) {
    if (s.source_instance_name.startsWith(`${prefix}-`)) {
      assert.equal((await client.snapshots.delete(s.id).asResponse()).status, 204);
    }
  }
  for (const i of await client.instances.list({ tags: { run: prefix } })) {
    if (i.id !== main?.id) await deleteInstance(i.id);
  }
  assert.deepEqual((await client.snapshots.list()).filter((s) => s.source_instance_name.startsWith(`${prefix}-`)), []);
  assert.deepEqual((await client.instances.list({ tags: { run: prefix } })).map((i) => i.id), main ? [main.id] : []);
});

// ---------------------------------------------------------------- stop / start / delete

check('instances.stop (Stopped, exit_code set)', async () => {
  const stopped = await client.instances.stop(main.id, { timeout: 60_000, maxRetries: 0 });
  assert.equal(stopped.state, 'Stopped');
  assert.equal(typeof stopped.exit_code, 'number', `exit_code ${stopped.exit_code}`);
  assert.ok(isTime(stopped.stopped_at), 'stopped_at set');
  if (verbose) console.log(`     exit_code ${stopped.exit_code}, exit_message ${JSON.stringify(stopped.exit_message)}`);
  const got = await client.instances.get(main.id);
  assert.equal(got.state, 'Stopped');
  assert.equal(got.exit_code, stopped.exit_code);
}, { needs: RUNNING });
const STOPPED = [...RUNNING, 'instances.stop (Stopped, exit_code set)'];

check('stop while Stopped is 409 invalid_state', async () => {
  await expectError(noRetry.instances.stop(main.id), ConflictError, 409, 'invalid_state');
}, { needs: STOPPED });

check('exec, cp and stat on a Stopped instance are 409 invalid_state', async () => {
  const body = await expectHandshake(openExec(baseURL, apiKey, main.id), 409, 'invalid_state');
  assert.match(body.message, /instance must be running \(current state: Stopped\)/);
  await expectHandshake(openExec(baseURL, apiKey, main.id, { endpoint: 'cp' }), 409, 'invalid_state');
  const src = path.join(tmpRoot, 'stopped.txt');
  fs.writeFileSync(src, 'x\n');
  await expectReject(cpToInstance(cpCfg, { instanceId: main.id, srcPath: src, dstPath: '/stopped.txt' }), /Unexpected server response: 409/);
  await expectReject(
    cpFromInstance(cpCfg, { instanceId: main.id, srcPath: '/etc/hostname', dstPath: tmpRoot }),
    /Unexpected server response: 409/,
  );
  const mark = requests.length;
  const err = await expectError(client.instances.stat(main.id, { path: '/' }), ConflictError, 409, 'invalid_state');
  assert.match(err.error.message, /instance must be running \(current state: Stopped\)/);
  assert.equal(requestsSince(mark).length, 1, 'a 409 invalid_state is not retried');
}, { needs: STOPPED });

check('instances.stats of a Stopped instance is 200', async () => {
  // Reference 6.3: stats is allowed in any state.
  const st = await client.instances.stats(main.id);
  assert.equal(st.instance_id, main.id);
  assert.equal(st.allocated_vcpus, main.vcpus);
  assert.equal(typeof st.cpu_seconds, 'number');
}, { needs: STOPPED });

check('instances.wait for Stopped on a Stopped instance returns at once', async () => {
  const w = await client.instances.wait(main.id, { state: 'Stopped', timeout: '30s' });
  assert.deepEqual({ state: w.state, timed_out: w.timed_out }, { state: 'Stopped', timed_out: false });
}, { needs: STOPPED });

check('instances.list state filter follows the stop', async () => {
  const ids = (l) => l.map((i) => i.id);
  assert.deepEqual(ids(await client.instances.list({ state: 'Stopped', tags: { run: prefix } })), [main.id]);
  assert.deepEqual(ids(await client.instances.list({ state: 'Running', tags: { run: prefix } })), []);
}, { needs: STOPPED });

check('instances.start with a cmd override, then Running', async () => {
  const marker = `second boot ${run}`;
  const started = await client.instances.start(
    main.id,
    { cmd: [`echo ${marker}; exec httpd -f -p 80 -h /www`] },
    { timeout: BOOT_WAIT_MS, maxRetries: 0 },
  );
  assert.equal(started.id, main.id);
  assert.ok(['Initializing', 'Running'].includes(started.state), `state ${started.state}`);
  assert.equal(started.exit_code ?? null, null, 'exit_code cleared');
  assert.ok(started.network.ip, 'new IP');
  await waitRunning(main.id);
  await waitLog(main.id, marker);
}, { needs: STOPPED });

check('exec works again after a restart', async () => {
  assertExit(await execMain(sh('echo again', { wait_for_agent: 60 })), 0, 'again\n');
}, { needs: [...STOPPED, 'instances.start with a cmd override, then Running', ...EXEC] });

check('instances.delete (204), then get is 404', async () => {
  const res = await client.instances.delete(main.id, { graceful_shutdown: false }).asResponse();
  assert.equal(res.status, 204);
  const err = await expectError(noRetry.instances.get(main.id), NotFoundError, 404, 'not_found');
  assert.ok(err instanceof NotFoundError);
  await expectError(noRetry.instances.delete(main.id), NotFoundError, 404, 'not_found');
  assert.deepEqual(await client.instances.list({ tags: { run: prefix } }), []);
}, { needs: MAIN });

// ---------------------------------------------------------------- main

console.log(`conformance: SDK @onkernel/hypeman against ${baseURL}, image ${image}, run ${prefix}`);
await runAll();
process.exit(failed ? 1 : 0);
