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
// Every instance it makes is named "sdk-<run>-..." so a caller can clean up
// after a failed run. Exit status: 0 when every check passed, 1 otherwise.
// Run: node test/conformance/conformance.mjs (after npm ci --prefix test/conformance)

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
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
