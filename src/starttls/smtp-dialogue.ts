// The pre-TLS SMTP server side (RFC 5321, RFC 3207): postern greets, answers EHLO with the
// backend's probed extensions plus STARTTLS, and either starts TLS or, on a plaintext session,
// hands the client to the backend by replaying its EHLO/HELO. A pure line machine: no sockets.
import type { Dialogue, DialogueAction, DialogueOptions, ProtocolWords } from './types.ts';
import { hasBadBytes, MAX_COMMANDS, MAX_ERRORS, splitCommand } from './lines.ts';

/** Commands that only the backend can answer (RFC 5321 section 4.1.1, RFC 3030, RFC 4954, RFC 1985). */
const BACKEND = new Set(['MAIL', 'RCPT', 'DATA', 'BDAT', 'AUTH', 'VRFY', 'EXPN', 'ETRN', 'HELP']);

/**
 * RFC 5321 section 3.8: 421 closes the channel and tells the sender to retry later; the enhanced
 * codes are RFC 3463's (4.3.2 system not accepting network messages, 4.4.1 no answer from host,
 * 4.7.0 security/policy, 4.3.0 other mail system status).
 */
export function smtpWords(hostname: string): ProtocolWords {
  return {
    timeout: `421 4.4.2 ${hostname} Timeout, closing connection\r\n`,
    backendDown: `421 4.3.2 ${hostname} Service not available\r\n`,
    backendSilent: `421 4.4.1 ${hostname} Backend not responding, try again later\r\n`,
    tooMany: `421 4.7.0 ${hostname} Too many connections, try again later\r\n`,
    shutdown: `421 4.3.2 ${hostname} Service shutting down\r\n`,
    internalError: `421 4.3.0 ${hostname} Internal error, try again later\r\n`,
    tooManyErrors: `421 4.7.0 ${hostname} Too many errors\r\n`,
  };
}

export function smtpDialogue(opts: DialogueOptions): Dialogue {
  const { hostname } = opts;
  // RFC 3207 section 4: a server that requires TLS should not offer AUTH before it; "AUTH=" is
  // the pre-RFC 4954 form some servers still announce for old Outlook clients.
  const keywords = opts.capabilities.filter((c) => {
    const word = (c.split(' ')[0] ?? '').toUpperCase();
    // XCLIENT and XFORWARD are refused after TLS as well: never announced.
    if (word === 'STARTTLS' || word === 'XCLIENT' || word === 'XFORWARD' || word === '') return false;
    return !(opts.requireTls && (word === 'AUTH' || word.startsWith('AUTH=')));
  });
  if (opts.tlsAvailable) keywords.push('STARTTLS');
  // RFC 5321 section 4.2.1: every line but the last has "-" after the code.
  const ehloReply = [hostname, ...keywords].map((l, i, all) => `250${i === all.length - 1 ? ' ' : '-'}${l}\r\n`).join('');

  let hello: string | null = null; // the client's last accepted EHLO/HELO line, as sent
  let errors = 0;
  let commands = 0;

  const reply = (text: string): DialogueAction => ({ kind: 'reply', text: `${text}\r\n` });
  const error = (text: string): DialogueAction => {
    if (++errors >= MAX_ERRORS) return { kind: 'close', text: `421 4.7.0 ${hostname} Too many errors\r\n`, reason: 'too_many_errors' };
    return reply(text);
  };

  return {
    // RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets, CRLF included.
    maxLine: 512,
    greeting: () => `220 ${opts.greeting}\r\n`,
    // RFC 5321 section 4.5.3.1.4 / 4.2.2: 500 with enhanced code 5.5.6 (RFC 3463 "syntax error... too long").
    onOverlong: () => error('500 5.5.6 Line too long'),

    onLine(line: Buffer): DialogueAction {
      // MAX_COMMANDS: a client looping on commands postern answers itself is closed.
      if (++commands > MAX_COMMANDS) return { kind: 'close', text: `421 4.7.0 ${hostname} Too many commands\r\n`, reason: 'too_many_commands' };
      // Never echo what the client sent: the replies below are fixed strings.
      if (hasBadBytes(line)) return error('500 5.5.2 Syntax error, binary data');
      const text = line.toString('utf8');
      const { verb, args } = splitCommand(text);
      switch (verb) {
        case 'EHLO':
        case 'HELO':
          // RFC 5321 section 4.1.1.1: the domain (or address literal) is required.
          if (args === '') return error(`501 5.5.4 Syntax: ${verb} hostname`);
          hello = text;
          return verb === 'EHLO' ? { kind: 'reply', text: ehloReply } : reply(`250 ${hostname}`);
        case 'NOOP': // RFC 5321 section 4.1.1.9: a parameter is allowed and ignored
        case 'RSET':
          return reply('250 2.0.0 OK');
        case 'QUIT':
          return { kind: 'close', text: '221 2.0.0 Bye\r\n', reason: 'quit' };
        case 'STARTTLS':
          // RFC 3207 section 4: "STARTTLS" takes no parameters -> 501; 454 when TLS is not
          // available. The client SHOULD have sent EHLO first, but nothing requires it.
          if (args !== '') return error('501 5.5.4 Syntax error (no parameters allowed)');
          if (!opts.tlsAvailable) return error('454 4.7.0 TLS not available');
          return { kind: 'starttls', text: '220 2.0.0 Ready to start TLS\r\n' };
      }
      if (!BACKEND.has(verb)) return error('500 5.5.2 Command not recognized');
      // RFC 3207 section 4: a server requiring TLS should answer 530 to every command other than
      // NOOP, EHLO, STARTTLS and QUIT (HELO and RSET are answered above: harmless).
      if (opts.requireTls) return error('530 5.7.0 Must issue a STARTTLS command first');
      if (hello === null) return error('503 5.5.1 Send EHLO/HELO first');
      // Plaintext session (RFC 3207 section 4: a public MX must not require TLS): the backend
      // sees the client's own EHLO/HELO, then this command and everything after it.
      return { kind: 'handoff', replay: `${hello}\r\n`, swallow: 1 };
    },
  };
}
