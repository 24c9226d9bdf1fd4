// The real azure-iothub Registry (no shims), driven by the Python tests against the IoT Hub emulator.
//
//   node registry.js scenario <connectionString> <deviceId> <moduleId>
//       device and module CRUD with ETags, step by step, as a service application does it
//   node registry.js call <connectionString> <method> [<json argument>...]
//       one Registry method, e.g. `call "$CS" get '"dev-1"'`
//
// Prints one JSON document on stdout: for each step {step, ok, result | error: {name, message, statusCode, code}}.
// The process trusts the emulator's CA through NODE_EXTRA_CA_CERTS, set by the test for this process only.
'use strict';

const { Registry } = require('azure-iothub');

function failure(err) {
  const response = err && err.response;
  let code;
  try {
    code = JSON.parse(err.responseBody).Message.split(';')[0].split(':')[1];
  } catch (_) {
    code = undefined;
  }
  return {
    name: err && err.constructor ? err.constructor.name : String(err),
    message: err && err.message,
    statusCode: response ? response.statusCode : undefined,
    code,
  };
}

async function attempt(steps, step, action) {
  try {
    const value = await action();
    const result = value && value.responseBody !== undefined ? value.responseBody : value;
    steps.push({ step, ok: true, result: JSON.parse(JSON.stringify(result === undefined ? null : result)) });
    return result;
  } catch (err) {
    steps.push({ step, ok: false, error: failure(err) });
    return undefined;
  }
}

// removeModule(module) has no promise form that works (the promise wrapper drops the callback when it is given a
// Module), so it is called with a callback, as its documentation shows.
function removeModule(registry, module) {
  return new Promise((resolve, reject) => {
    registry.removeModule(module, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

async function scenario(registry, deviceId, moduleId) {
  const steps = [];
  const created = await attempt(steps, 'create device', () => registry.create({ deviceId }));
  await attempt(steps, 'create device again', () => registry.create({ deviceId }));
  await attempt(steps, 'get device', () => registry.get(deviceId));
  await attempt(steps, 'list devices', () => registry.list());
  await attempt(steps, 'update device (If-Match "*")', () => registry.update({
    deviceId, status: 'disabled', authentication: created && created.authentication }));

  const module = await attempt(steps, 'add module', () => registry.addModule({ deviceId, moduleId }));
  await attempt(steps, 'add module again', () => registry.addModule({ deviceId, moduleId }));
  await attempt(steps, 'get module', () => registry.getModule(deviceId, moduleId));
  await attempt(steps, 'list modules', () => registry.getModulesOnDevice(deviceId));
  const stale = module ? { ...module } : { deviceId, moduleId, etag: 'none' };
  const updated = await attempt(steps, 'update module with its etag', () => registry.updateModule({
    ...stale, managedBy: 'owner-1' }));
  await attempt(steps, 'update module with a stale etag', () => registry.updateModule({
    ...stale, managedBy: 'owner-2' }));
  const forced = await attempt(steps, 'update module forced (If-Match "*")', () => registry.updateModule({
    ...stale, managedBy: 'owner-3' }, true));
  await attempt(steps, 'remove module with a stale etag', () => removeModule(registry, updated || stale));
  await attempt(steps, 'remove module with its etag', () => removeModule(registry, forced || stale));
  await attempt(steps, 'get removed module', () => registry.getModule(deviceId, moduleId));

  await attempt(steps, 'delete device', () => registry.delete(deviceId));
  await attempt(steps, 'get deleted device', () => registry.get(deviceId));
  return steps;
}

async function main(argv) {
  const [mode, connectionString, ...rest] = argv;
  const registry = Registry.fromConnectionString(connectionString);
  if (mode === 'scenario') {
    return scenario(registry, rest[0], rest[1]);
  }
  if (mode === 'call') {
    const [method, ...args] = rest;
    const steps = [];
    await attempt(steps, method, () => registry[method](...args.map((a) => JSON.parse(a))));
    return steps;
  }
  throw new Error(`unknown mode ${mode}`);
}

main(process.argv.slice(2)).then(
  (steps) => { process.stdout.write(JSON.stringify(steps) + '\n'); },
  (err) => { process.stderr.write(`${err.stack || err}\n`); process.exitCode = 2; },
);
