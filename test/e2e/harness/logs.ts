// Reading and polling the daemons' log files.
import { readFile } from 'node:fs/promises';
import { sleep } from './system.ts';

export async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** Polls a file until `re` matches; on timeout the error carries the file's tail. */
export async function waitForText(file: string, re: RegExp, timeoutMs: number, what: string): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await readText(file);
    const match = text.match(re);
    if (match) return match;
    if (Date.now() > deadline) {
      throw new Error(`${what}: no match for ${re} within ${timeoutMs} ms in ${file}; last lines:\n${text.slice(-3000)}`);
    }
    await sleep(50);
  }
}
