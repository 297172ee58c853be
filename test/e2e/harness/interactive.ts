// Drives an interactive client program (openssl s_client) through its stdin: write a line, wait
// for the answer on stdout/stderr, write the next. Never a fixed script with blind delays.
import { spawn } from 'node:child_process';
import { readStream, type StreamReader } from './streams.ts';

export interface Interactive extends StreamReader {
  /** Writes one line (LF; s_client -crlf turns it into CRLF). */
  send(line: string): void;
  /** Closes stdin (s_client then closes the connection, unless told -ign_eof). */
  endInput(): void;
  /** Resolves with the exit code (or signal name) once the program has exited. */
  exited(timeoutMs?: number): Promise<number | string>;
  kill(): void;
}

export function spawnInteractive(file: string, args: string[]): Interactive {
  const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const reader = readStream(child.stdout, child.stderr);
  child.stdin.on('error', () => {}); // the program may exit before reading everything
  const exit = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'));
    child.once('error', (err) => resolve(`spawn error: ${err.message}`));
  });
  return {
    ...reader,
    send: (line) => {
      child.stdin.write(`${line}\n`);
    },
    endInput: () => {
      child.stdin.end();
    },
    exited: async (timeoutMs = 15_000) => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`${file} did not exit within ${timeoutMs} ms; output:\n${reader.transcript()}`));
        }, timeoutMs);
      });
      try {
        return await Promise.race([exit, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
    kill: () => {
      child.kill('SIGKILL');
    },
  };
}
