// A Node.js client of the Tidegate daemon, as a grpc-js user would write one: stubs loaded from
// proto/ at run time by @grpc/proto-loader, rich error details decoded from the
// grpc-status-details-bin trailer with protobufjs and the googleapis google/rpc protos, and
// server reflection through grpc-js-reflection-client speaking grpc.reflection.v1.
//
//   node client.js bad-request SOCKET RPC_PROTO_DIR   # AddAclRule with dport 70000 -> JSON
//   node client.js reflect SOCKET                     # v1 reflection: services, methods -> JSON
//
// Prints one JSON object on stdout; exit 0 when the call went as far as the object says.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const DEADLINE_MS = 30000;

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function tidegate() {
  const definition = protoLoader.loadSync('tidegate/v1/tidegate.proto', {
    includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, defaults: true,
  });
  return grpc.loadPackageDefinition(definition).tidegate.v1;
}

// google.rpc.Status -> {code, message, details: [{type, ...decoded}]}: BadRequest decoded.
function decodeStatus(bytes, rpcProtoDir) {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => path.join(rpcProtoDir, target);
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  const Status = root.lookupType('google.rpc.Status');
  const BadRequest = root.lookupType('google.rpc.BadRequest');
  const status = Status.decode(bytes);
  const details = status.details.map((any) => {
    const type = any.type_url.split('/').pop();
    if (type !== 'google.rpc.BadRequest') return { type };
    return { type, ...BadRequest.toObject(BadRequest.decode(any.value)) };
  });
  return { code: status.code, message: status.message, details };
}

function badRequest(socket, rpcProtoDir) {
  const v1 = tidegate();
  const client = new v1.PolicyService(`unix:${socket}`, grpc.credentials.createInsecure());
  const rule = { id: 7, action: 'ACTION_ALLOW', match: { protocol: 'PROTOCOL_UDP', dport: { low: 70000, high: 70000 } } };
  client.AddAclRule({ rule }, { deadline: deadline() }, (err, answer) => {
    client.close();
    if (!err) {
      console.log(JSON.stringify({ ok: true, answer }));
      process.exit(1);
    }
    const raw = err.metadata.get('grpc-status-details-bin');
    const out = { code: err.code, codeName: grpc.status[err.code], details: err.details };
    out.status = raw.length ? decodeStatus(raw[0], rpcProtoDir) : null;
    console.log(JSON.stringify(out));
  });
}

async function reflect(socket) {
  const { GrpcReflection } = require('grpc-js-reflection-client');
  const client = new GrpcReflection(`unix:${socket}`, grpc.credentials.createInsecure(), {}, 'v1');
  const services = await client.listServices();
  const methods = await client.listMethods('tidegate.v1.PolicyService');
  const own = await client.listMethods('grpc.reflection.v1.ServerReflection');
  console.log(JSON.stringify({ services, methods: methods.map((m) => m.name), reflection: own.map((m) => m.name) }));
  process.exit(0);  // the reflection client keeps its channel open
}

const [mode, socket, rpcProtoDir] = process.argv.slice(2);
if (mode === 'bad-request') {
  badRequest(socket, rpcProtoDir);
} else if (mode === 'reflect') {
  reflect(socket).catch((err) => {
    console.log(JSON.stringify({ error: String(err && err.message ? err.message : err), code: err && err.code }));
    process.exit(1);
  });
} else {
  console.error('usage: node client.js bad-request SOCKET RPC_PROTO_DIR | reflect SOCKET');
  process.exit(2);
}
