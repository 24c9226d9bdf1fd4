// The real azure-iot-provisioning-device-http client with symmetric-key attestation (no shims), driven by the
// Python tests against the DPS emulator.
//
//   node provision.js <provisioningHost> <idScope> <registrationId> individual <deviceKey base64> [<payload json>]
//   node provision.js <provisioningHost> <idScope> <registrationId> group <groupKey base64> [<payload json>]
//
// For a group enrollment the device key is derived as Microsoft's documentation tells device builders to:
// base64(HMAC-SHA256(groupKey, registrationId)). Prints {ok, result: registrationState} or {ok: false, error}.
// The process trusts the emulator's CA through NODE_EXTRA_CA_CERTS, set by the test for this process only.
'use strict';

const crypto = require('crypto');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');

function deviceKey(kind, key, registrationId) {
  if (kind === 'individual') {
    return key;
  }
  if (kind === 'group') {
    return crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(registrationId, 'utf8').digest('base64');
  }
  throw new Error(`enrollment kind must be individual or group, not ${kind}`);
}

async function main([host, idScope, registrationId, kind, key, payload]) {
  const security = new SymmetricKeySecurityClient(registrationId, deviceKey(kind, key, registrationId));
  const transport = new Http();
  transport.setTransportOptions({ pollingInterval: 100 });  // the emulator's Retry-After still wins when sent
  const client = ProvisioningDeviceClient.create(host, idScope, transport, security);
  if (payload) {
    client.setProvisioningPayload(JSON.parse(payload));
  }
  try {
    const result = await client.register();
    return { ok: true, result: result.registrationState || result };
  } catch (err) {
    return {
      ok: false,
      error: {
        name: err && err.constructor ? err.constructor.name : String(err),
        message: err && err.message,
        statusCode: err && err.response ? err.response.statusCode : undefined,
      },
    };
  }
}

main(process.argv.slice(2)).then(
  (out) => { process.stdout.write(JSON.stringify(out) + '\n'); },
  (err) => { process.stderr.write(`${err.stack || err}\n`); process.exitCode = 2; },
);
