// A minimal Chrome DevTools Protocol client for a daemon started with --inspect on a loopback
// port: a forced full GC, then process.memoryUsage(). Without the GC, RSS and heap mostly show how
// far V8 let the heap grow under the last burst of load, which says nothing about leaks.
import http from 'node:http';

function getJson(port: number, path: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          try {
            resolve(JSON.parse(body));
          } catch (err) {
            reject(err as Error);
          }
        });
      })
      .on('error', reject);
  });
}

/** process.memoryUsage() of the inspected process after three forced full GCs, in bytes. */
export async function memoryAfterGc(inspectPort: number): Promise<NodeJS.MemoryUsage> {
  const list = (await getJson(inspectPort, '/json/list')) as Array<{ webSocketDebuggerUrl: string }>;
  const ws = new WebSocket(list[0]!.webSocketDebuggerUrl);
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  let id = 0;
  const call = (method: string, params: object = {}) =>
    new Promise<{ result?: { value?: string } }>((resolve) => {
      const my = ++id;
      const on = (ev: MessageEvent) => {
        const m = JSON.parse(String(ev.data)) as { id: number; result: { result?: { value?: string } } };
        if (m.id !== my) return;
        ws.removeEventListener('message', on);
        resolve(m.result);
      };
      ws.addEventListener('message', on);
      ws.send(JSON.stringify({ id: my, method, params }));
    });
  try {
    for (let i = 0; i < 3; i++) await call('HeapProfiler.collectGarbage');
    const r = await call('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true });
    return JSON.parse(String(r.result?.value)) as NodeJS.MemoryUsage;
  } finally {
    ws.close();
  }
}
