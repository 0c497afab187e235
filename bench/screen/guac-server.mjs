// Stack (c)'s WebSocket side: guacamole-lite (npm, pinned in package-lock.json) in front of guacd,
// on 127.0.0.1 with a port the OS chooses. It prints one line,
//   ws ws://127.0.0.1:PORT/ token TOKEN
// where TOKEN is guacamole-lite's encrypted connection token for the VNC server given (the key is
// random per process), then serves until killed. A page connects with guacamole-common-js:
// `new Guacamole.WebSocketTunnel(WS)` and `client.connect('token=' + TOKEN)`.
//
// usage: node guac-server.mjs --guacd HOST:PORT --vnc HOST:PORT --size WIDTHxHEIGHT
import crypto from 'node:crypto';
import http from 'node:http';
import GuacamoleLite from 'guacamole-lite';

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  if (i < 0 || i + 1 >= args.length) throw new Error(`missing ${name}`);
  return args[i + 1];
};
const hostPort = (s) => {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i), Number(s.slice(i + 1))];
};
const [guacdHost, guacdPort] = hostPort(opt('--guacd'));
const [vncHost, vncPort] = hostPort(opt('--vnc'));
const [width, height] = opt('--size').split('x').map(Number);

const key = crypto.randomBytes(32);
const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
// Errors only: guacamole-lite's default (VERBOSE) logs every instruction, which would be measured
// as Guacamole's CPU.
const LOG_ERRORS = 10;
// eslint-disable-next-line no-new
new GuacamoleLite(
  { server },
  { host: guacdHost, port: guacdPort },
  { crypt: { cypher: 'AES-256-CBC', key }, log: { level: LOG_ERRORS }, maxInactivityTime: 30000 },
);

// The token format of guacamole-lite's README: base64(JSON {iv, value}) of AES-256-CBC(JSON).
function token(settings) {
  const iv = crypto.randomBytes(16);
  const cipher = crypto.createCipheriv('AES-256-CBC', key, iv);
  const value = Buffer.concat([cipher.update(JSON.stringify(settings), 'utf8'), cipher.final()]);
  return Buffer.from(JSON.stringify({ iv: iv.toString('base64'), value: value.toString('base64') }))
    .toString('base64');
}

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  // What Guacamole's own web client asks for in Chromium: PNG, JPEG and WebP images; no audio.
  const t = token({
    connection: {
      type: 'vnc',
      settings: {
        hostname: vncHost, port: String(vncPort), width, height, dpi: 96,
        audio: [], image: ['image/png', 'image/jpeg', 'image/webp'],
      },
    },
  });
  process.stdout.write(`ws ws://127.0.0.1:${port}/ token ${t}\n`);
});
