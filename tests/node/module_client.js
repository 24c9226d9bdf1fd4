'use strict';
// The real Azure IoT Node SDK as an IoT Edge module, unchanged: ModuleClient.fromEnvironment() reads the IOTEDGE_*
// variables the runtime gave this process, fetches the trust bundle and has its SAS token signed through the
// workload API (IotEdgeAuthenticationProvider). Prints one line, "RESULT <json>", with what the SDK obtained, then
// "DONE".
//
// Usage: node module_client.js <mqtt|http> [--send] [--stay]
//   --send  go on along the SDK's normal path: open the client and send one telemetry message (over HTTP, to the
//           hub named by IOTEDGE_IOTHUBHOSTNAME, trusting only the trust bundle, as the SDK does).
//   --stay  keep running after DONE (a module that exits would be restarted by its runtime).
//
// The JSON: {transport, stage, error?, sasToken?, trustBundle?, credentials?, open?, send?, signError?}. `stage` is
// the last step reached; `error` ({name, message, statusCode}) says why the SDK stopped there. When fromEnvironment
// fails (the trust bundle refused), the signing path is tried on its own too: signError, or the sasToken it got.

const { ModuleClient, Message, IotEdgeAuthenticationProvider } = require('azure-iot-device');
const { NoRetry } = require('azure-iot-common');

const transports = {
  mqtt: () => require('azure-iot-device-mqtt').Mqtt,
  http: () => require('azure-iot-device-http').Http,
};

function describe(err) {
  if (!err) return null;
  const status = err.response && err.response.statusCode;
  return { name: err.name || err.constructor.name, message: String(err.message || err),
           statusCode: status === undefined ? null : status };
}

async function step(result, stage, action) {
  result.stage = stage;
  try {
    return await action();
  } catch (err) {
    result.error = describe(err);
    throw err;
  }
}

async function run(kind, send) {
  const result = { transport: kind, stage: 'start' };
  const Transport = transports[kind]();
  try {
    const client = await step(result, 'fromEnvironment', () => ModuleClient.fromEnvironment(Transport));
    client.setRetryPolicy(new NoRetry());
    // What fromEnvironment handed the transport: the CA it fetched from the workload API, and its edge
    // authentication provider (the SDK keeps both on the client's method client, whatever the transport).
    const methodClient = client._methodClient;
    result.trustBundle = methodClient._options.ca;
    const auth = methodClient._authProvider;
    if (send) {
      result.open = await step(result, 'open', async () => ({ ok: true, result: (await client.open()).constructor.name }));
      const message = new Message(JSON.stringify({ temperature: 21.5 }));
      message.messageId = 'edgeward-node-module-client';
      result.send = await step(result, 'send', async () => ({ ok: true, result: (await client.sendEvent(message)).constructor.name }));
    }
    const credentials = await step(result, 'getDeviceCredentials', () => auth.getDeviceCredentials());
    result.sasToken = credentials.sharedAccessSignature;
    result.credentials = { host: credentials.host, deviceId: credentials.deviceId, moduleId: credentials.moduleId,
                           gatewayHostName: credentials.gatewayHostName };
    result.stage = 'done';
    auth.stop();
    await client.close().catch(() => undefined);
  } catch (_) {
    // already recorded in result.error
  }
  if (result.stage === 'fromEnvironment' && process.env.IOTEDGE_WORKLOADURI) {
    // The trust bundle was refused: try the signing path on its own, with the edge authentication provider
    // fromEnvironment builds from the same variables, so a refusal of each call shows.
    const auth = new IotEdgeAuthenticationProvider({
      workloadUri: process.env.IOTEDGE_WORKLOADURI, deviceId: process.env.IOTEDGE_DEVICEID,
      moduleId: process.env.IOTEDGE_MODULEID, iothubHostName: process.env.IOTEDGE_IOTHUBHOSTNAME,
      authScheme: process.env.IOTEDGE_AUTHSCHEME, gatewayHostName: process.env.IOTEDGE_GATEWAYHOSTNAME,
      generationId: process.env.IOTEDGE_MODULEGENERATIONID });
    try {
      result.sasToken = (await auth.getDeviceCredentials()).sharedAccessSignature;
    } catch (err) {
      result.signError = describe(err);
    }
    auth.stop();
  }
  return result;
}

async function main() {
  const kind = process.argv[2];
  if (!transports[kind]) {
    console.error('usage: node module_client.js <mqtt|http> [--send] [--stay]');
    process.exit(2);
  }
  const result = await run(kind, process.argv.includes('--send'));
  process.stdout.write('RESULT ' + JSON.stringify(result) + '\nDONE\n');
  if (process.argv.includes('--stay')) {
    setInterval(() => undefined, 3600 * 1000);
  } else {
    process.exit(result.error ? 1 : 0);
  }
}

main();
