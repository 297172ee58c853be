// The pre-TLS IMAP server side (RFC 9051 / RFC 3501, RFC 2595): postern greets with the backend's
// probed capabilities plus STARTTLS, answers CAPABILITY/NOOP/LOGOUT/STARTTLS itself, and either
// starts TLS or, on a plaintext session, hands the client to the backend. No sockets.
import type { Dialogue, DialogueAction, DialogueOptions, ProtocolWords } from './types.ts';
import { hasBadBytes, MAX_COMMANDS, MAX_ERRORS } from './lines.ts';

/**
 * RFC 9051 section 9: tag = 1*<any ASTRING-CHAR except "+">, i.e. printable ASCII without
 * SP ( ) { % * " \ and "+" ("]" is allowed).
 */
const TAG = /^[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+$/;

/** IMAP4rev1/rev2 commands and common extensions (RFC 9051 section 6, RFC 2971, 5161, 2177, 4978, 5465, ...). */
const KNOWN = new Set([
  'APPEND', 'AUTHENTICATE', 'CHECK', 'CLOSE', 'COMPRESS', 'COPY', 'CREATE', 'DELETE', 'DELETEACL', 'ENABLE',
  'EXAMINE', 'EXPUNGE', 'FETCH', 'GETACL', 'GETMETADATA', 'GETQUOTA', 'GETQUOTAROOT', 'ID', 'IDLE', 'LIST',
  'LISTRIGHTS', 'LOGIN', 'LSUB', 'MOVE', 'MYRIGHTS', 'NAMESPACE', 'NOTIFY', 'RENAME', 'SEARCH', 'SELECT',
  'SETACL', 'SETMETADATA', 'SETQUOTA', 'SORT', 'STATUS', 'STORE', 'SUBSCRIBE', 'THREAD', 'UID', 'UNAUTHENTICATE',
  'UNSELECT', 'UNSUBSCRIBE', 'XLIST',
]);

/** A non-synchronizing literal `{n+}` at the end of a line (RFC 7888 section 3; LITERAL- uses the same syntax). */
const NONSYNC_LITERAL = /\{(\d{1,19})\+\}$/;

/**
 * RFC 9051 section 7.1.5: BYE before the server closes; the response codes UNAVAILABLE (try
 * later) and SERVERBUG are RFC 5530 section 3's.
 */
export function imapWords(hostname: string): ProtocolWords {
  return {
    timeout: `* BYE ${hostname} Autologout; idle for too long\r\n`,
    backendDown: `* BYE [UNAVAILABLE] ${hostname} backend not available\r\n`,
    backendSilent: `* BYE [UNAVAILABLE] ${hostname} backend not responding, try again later\r\n`,
    tooMany: `* BYE [UNAVAILABLE] ${hostname} too many connections, try again later\r\n`,
    shutdown: `* BYE ${hostname} shutting down\r\n`,
    internalError: `* BYE [SERVERBUG] ${hostname} internal error, try again later\r\n`,
    tooManyErrors: '* BYE Too many errors\r\n',
  };
}

export function imapDialogue(opts: DialogueOptions): Dialogue {
  const { hostname } = opts;
  const caps = ['IMAP4rev1'];
  for (const c of opts.capabilities) {
    const upper = c.toUpperCase();
    if (upper === '' || upper === 'STARTTLS' || upper === 'LOGINDISABLED' || upper === 'IMAP4REV1') continue;
    // RFC 9051 section 6.2.3 / RFC 3501 section 6.2.1: no plaintext authentication before TLS
    // when the listener requires it; LOGINDISABLED says so.
    if (opts.requireTls && upper.startsWith('AUTH=')) continue;
    if (!caps.some((k) => k.toUpperCase() === upper)) caps.push(c);
  }
  if (opts.tlsAvailable) caps.push('STARTTLS');
  if (opts.requireTls) caps.push('LOGINDISABLED');
  const capList = caps.join(' ');

  let errors = 0;
  let commands = 0;
  // Octets of a non-synchronizing literal of a refused command still to ignore; after them the
  // refused command goes on (to its CRLF). -1: none.
  let skip = -1;

  const reply = (text: string): DialogueAction => ({ kind: 'reply', text });
  const error = (text: string): DialogueAction => {
    if (++errors >= MAX_ERRORS) return { kind: 'close', text: '* BYE Too many errors\r\n', reason: 'too_many_errors' };
    return reply(text);
  };
  /** A refused command may carry LITERAL+ data: its octets (and the rest of the command) are not commands. */
  const refuse = (line: string, text: string): DialogueAction => {
    const lit = NONSYNC_LITERAL.exec(line);
    skip = lit ? Number(lit[1]) : -1;
    return error(text);
  };

  return {
    // RFC 9051 section 4 / RFC 7162 section 4: servers should accept command lines of at least 8192 octets.
    maxLine: 8192,
    greeting: () => `* OK [CAPABILITY ${capList}] ${opts.greeting}\r\n`,
    // RFC 9051 section 7.1.5: BYE before an autologout.
    onOverlong: () => ({ kind: 'close', text: '* BAD Line too long\r\n', reason: 'line_too_long' }),

    onLine(buf: Buffer): DialogueAction {
      const line = buf;
      if (skip >= 0) {
        // Literal octets are counted with a CRLF per line the caller split off (an estimate for
        // bare LF); what follows the literal continues the refused command, up to its CRLF.
        if (line.length + 2 <= skip) {
          skip -= line.length + 2;
          return reply('');
        }
        const lit = NONSYNC_LITERAL.exec(line.toString('latin1', skip));
        skip = lit ? Number(lit[1]) : -1;
        return reply('');
      }
      // MAX_COMMANDS: a client looping on commands postern answers itself is closed.
      if (++commands > MAX_COMMANDS) return { kind: 'close', text: '* BYE Too many commands\r\n', reason: 'too_many_commands' };
      if (hasBadBytes(line)) return error('* BAD Invalid characters\r\n');
      const text = line.toString('utf8');
      const sp = text.indexOf(' ');
      const tag = sp < 0 ? text : text.slice(0, sp);
      if (!TAG.test(tag)) return refuse(text, '* BAD Invalid tag\r\n');
      const rest = sp < 0 ? '' : text.slice(sp + 1);
      const m = /^([A-Za-z]+)(?: (.*))?$/.exec(rest);
      const command = m ? m[1]!.toUpperCase() : '';
      const args = m?.[2]?.trim() ?? '';
      switch (command) {
        case 'CAPABILITY':
          return reply(`* CAPABILITY ${capList}\r\n${tag} OK CAPABILITY completed\r\n`);
        case 'NOOP':
          return reply(`${tag} OK NOOP completed\r\n`);
        case 'LOGOUT':
          return { kind: 'close', text: `* BYE ${hostname} logging out\r\n${tag} OK LOGOUT completed\r\n`, reason: 'quit' };
        case 'STARTTLS':
          // RFC 9051 section 6.2.1: STARTTLS has no arguments.
          if (args !== '') return error(`${tag} BAD STARTTLS takes no arguments\r\n`);
          if (!opts.tlsAvailable) return error(`${tag} NO STARTTLS not available\r\n`);
          return { kind: 'starttls', text: `${tag} OK Begin TLS negotiation now\r\n` };
      }
      if (!KNOWN.has(command)) return refuse(text, `${tag} BAD ${command === '' && rest === '' ? 'Missing command' : 'Unknown command'}\r\n`);
      if (opts.requireTls) {
        // RFC 9051 section 6.2.3 (LOGINDISABLED -> NO) with the PRIVACYREQUIRED response code of
        // RFC 5530 section 3; everything else needs an authenticated session anyway.
        if (command === 'LOGIN' || command === 'AUTHENTICATE') return refuse(text, `${tag} NO [PRIVACYREQUIRED] Use STARTTLS first\r\n`);
        return refuse(text, `${tag} BAD Use STARTTLS first\r\n`);
      }
      // Plaintext session: the backend answers this command and everything after it.
      return { kind: 'handoff', replay: '', swallow: 0 };
    },
  };
}
