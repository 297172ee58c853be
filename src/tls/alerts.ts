// Pre-handshake TLS alert records, written by postern itself as plaintext before any handshake
// (RFC 8446 section 6: alerts before the handshake completes are sent unencrypted).
// Node's own SNI handling silently serves a default certificate, so strict refusal is ours.

/** RFC 6066 section 3. */
export const ALERT_UNRECOGNIZED_NAME = 112;
/** RFC 7301 section 3.2. */
export const ALERT_NO_APPLICATION_PROTOCOL = 120;
/** RFC 8446 section 6.2: a message could not be decoded (bad lengths, out-of-range fields). */
export const ALERT_DECODE_ERROR = 50;
/** RFC 8446 section 6.2: a field was syntactically right but illegal (duplicate extensions). */
export const ALERT_ILLEGAL_PARAMETER = 47;
/** RFC 8446 section 6.2: a record longer than allowed. */
export const ALERT_RECORD_OVERFLOW = 22;

const cache = new Map<number, Buffer>();

/**
 * A fatal alert record: content type 21, legacy version 0x0303, length 2, level 2 (fatal),
 * description. RFC 8446 section 5.1 allows 0x0303 as the record version for all records.
 */
export function alertRecord(description: number): Buffer {
  let rec = cache.get(description);
  if (!rec) {
    rec = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]);
    cache.set(description, rec);
  }
  return rec;
}

export const ALERT_NAMES: Record<number, string> = {
  22: 'record_overflow',
  47: 'illegal_parameter',
  50: 'decode_error',
  112: 'unrecognized_name',
  120: 'no_application_protocol',
};
