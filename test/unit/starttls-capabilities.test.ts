import { describe, it, expect } from 'vitest';
import { completeSmtpReply, parseImapCapability, parsePop3Capa, parseSmtpEhlo } from '../../src/starttls/capabilities.ts';

describe('smtp capabilities', () => {
  it('lists EHLO keywords with parameters, without the server name and STARTTLS', () => {
    const reply = '250-backend.local\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n';
    expect(parseSmtpEhlo(reply)).toEqual(['PIPELINING', 'SIZE 10240000', 'AUTH PLAIN LOGIN', '8BITMIME']);
  });
  it('gives no keywords for a single-line EHLO reply', () => {
    expect(parseSmtpEhlo('250 backend.local\r\n')).toEqual([]);
  });
  it('gives no keywords for a refused EHLO', () => {
    expect(parseSmtpEhlo('502 5.5.2 Error: command not recognized\r\n')).toEqual([]);
  });
  it('finds a complete multiline reply and its length', () => {
    const text = '220-a\r\n220 b\r\n250 next';
    expect(completeSmtpReply(text)).toEqual({ code: 220, lines: ['a', 'b'], length: 14 });
  });
  it('reports an unfinished reply as incomplete', () => {
    expect(completeSmtpReply('250-a\r\n250-b\r\n')).toBeNull();
  });
  it('accepts a final line with only the code', () => {
    expect(completeSmtpReply('250\r\n')).toEqual({ code: 250, lines: [''], length: 5 });
  });
});

describe('imap capabilities', () => {
  it('lists atoms from a CAPABILITY response without STARTTLS and LOGINDISABLED', () => {
    const text = '* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ STARTTLS LOGINDISABLED ID\r\np1 OK done\r\n';
    expect(parseImapCapability(text)).toEqual(['IMAP4rev1', 'SASL-IR', 'LITERAL+', 'ID']);
  });
  it('falls back to the [CAPABILITY] response code of the greeting', () => {
    expect(parseImapCapability('* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] Dovecot ready.\r\n')).toEqual(['IMAP4rev1', 'AUTH=PLAIN']);
  });
  it('gives nothing when no capability list is present', () => {
    expect(parseImapCapability('p1 BAD what\r\n')).toEqual([]);
  });
});

describe('pop3 capabilities', () => {
  it('lists the lines between +OK and the dot without STLS', () => {
    expect(parsePop3Capa('+OK\r\nCAPA\r\nTOP\r\nSTLS\r\nSASL PLAIN\r\n.\r\n')).toEqual(['CAPA', 'TOP', 'SASL PLAIN']);
  });
  it('gives nothing for -ERR', () => {
    expect(parsePop3Capa('-ERR unknown command\r\n')).toEqual([]);
  });
  it('gives nothing for a list without its final dot', () => {
    expect(parsePop3Capa('+OK\r\nTOP\r\n')).toEqual([]);
  });
});
