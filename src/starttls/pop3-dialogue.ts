// The pre-TLS POP3 server side (RFC 1939, RFC 2449, RFC 2595): postern greets, answers CAPA with
// the backend's probed capabilities plus STLS, and either starts TLS or, on a plaintext session,
// hands the client to the backend. No sockets.
import type { Dialogue, DialogueAction, DialogueOptions, ProtocolWords } from './types.ts';
import { hasBadBytes, MAX_COMMANDS, MAX_ERRORS, splitCommand } from './lines.ts';

/** Authentication commands (RFC 1939 section 7, RFC 5034). */
const AUTH = new Set(['USER', 'PASS', 'APOP', 'AUTH']);
/** Other AUTHORIZATION-state commands that only the backend can answer (RFC 6856 sections 2 and 3). */
const OTHER = new Set(['UTF8', 'LANG']);

/** RFC 1939 section 4 allows -ERR as the greeting; [SYS/TEMP] (RFC 3206 section 4) says "try later". */
export function pop3Words(hostname: string): ProtocolWords {
  return {
    timeout: '-ERR Timeout\r\n',
    backendDown: `-ERR [SYS/TEMP] ${hostname} backend not available\r\n`,
    backendSilent: `-ERR [SYS/TEMP] ${hostname} backend not responding, try again later\r\n`,
    tooMany: `-ERR [SYS/TEMP] ${hostname} too many connections, try again later\r\n`,
    shutdown: `-ERR [SYS/TEMP] ${hostname} shutting down\r\n`,
    internalError: `-ERR [SYS/TEMP] ${hostname} internal error, try again later\r\n`,
    tooManyErrors: '-ERR Too many errors\r\n',
  };
}

export function pop3Dialogue(opts: DialogueOptions): Dialogue {
  const lines = opts.capabilities.filter((c) => {
    const word = (c.split(' ')[0] ?? '').toUpperCase();
    // An empty or dot-led line would end or corrupt the multi-line response.
    if (word === '' || word === 'STLS' || c.startsWith('.')) return false;
    // RFC 2595 section 4: a server that requires TLS may hide USER and SASL before STLS.
    return !(opts.requireTls && (word === 'USER' || word === 'SASL'));
  });
  if (opts.tlsAvailable) lines.push('STLS');
  // RFC 2449 section 5: "+OK", one capability per line, "." alone ends the list.
  const capa = `+OK Capability list follows\r\n${lines.map((l) => `${l}\r\n`).join('')}.\r\n`;

  let errors = 0;
  let commands = 0;
  const reply = (text: string): DialogueAction => ({ kind: 'reply', text: `${text}\r\n` });
  const error = (text: string): DialogueAction => {
    if (++errors >= MAX_ERRORS) return { kind: 'close', text: '-ERR Too many errors\r\n', reason: 'too_many_errors' };
    return reply(text);
  };

  return {
    // RFC 2449 section 4: a command line is at most 255 octets, CRLF included.
    maxLine: 255,
    greeting: () => `+OK ${opts.greeting}\r\n`,
    onOverlong: () => error('-ERR Line too long'),

    onLine(line: Buffer): DialogueAction {
      // MAX_COMMANDS: a client looping on commands postern answers itself is closed.
      if (++commands > MAX_COMMANDS) return { kind: 'close', text: '-ERR Too many commands\r\n', reason: 'too_many_commands' };
      if (hasBadBytes(line)) return error('-ERR Invalid characters');
      const { verb, args } = splitCommand(line.toString('utf8'));
      switch (verb) {
        case 'CAPA':
          return { kind: 'reply', text: capa };
        case 'QUIT':
          return { kind: 'close', text: '+OK Bye\r\n', reason: 'quit' };
        case 'STLS':
          // RFC 2595 section 4: STLS takes no arguments.
          if (args !== '') return error('-ERR STLS takes no arguments');
          if (!opts.tlsAvailable) return error('-ERR STLS not available');
          return { kind: 'starttls', text: '+OK Begin TLS negotiation\r\n' };
      }
      if (AUTH.has(verb) || OTHER.has(verb)) {
        // RFC 3206 section 5: [AUTH] marks an authentication refused by policy (here: not before
        // TLS), so the client does not ask the user for another password. Dovecot answers the same.
        if (opts.requireTls) return error(AUTH.has(verb) ? '-ERR [AUTH] Use STLS first' : '-ERR Use STLS first');
        // Plaintext session: the backend answers this command and everything after it.
        return { kind: 'handoff', replay: '', swallow: 0 };
      }
      return error('-ERR Unknown command');
    },
  };
}
