// Private Postfix, Dovecot and Exim instances on loopback for end-to-end tests.
export { startPostfix, MAIL_DOMAIN } from './postfix.ts';
export type { PostfixHandle, PostfixOptions } from './postfix.ts';
export { startDovecot } from './dovecot.ts';
export type { DovecotHandle, DovecotOptions } from './dovecot.ts';
export { freePort, freePorts, isListening } from './ports.ts';
export { requireProgram, requireRoot, run } from './system.ts';
export { connectLineClient } from './line-client.ts';
export type { LineClient, ConnectOptions } from './line-client.ts';
export { startExim, findExim, EXIM_NAME, EXIM_USERS } from './exim.ts';
export type { EximHandle, EximOptions } from './exim.ts';
