// Request bodies of the JSON API, in either form a client finds natural: JSON with base64 images
// ({image: "…"} / {images: ["…"]}, data: URLs accepted) or multipart/form-data with image files and
// text fields. Both become {images, fields}; every problem is an InputError (→ 400) that says which
// field is wrong.
import type { FastifyRequest } from 'fastify';
import { InputError } from './zeroshot.js';

export interface ParsedBody {
  images: Buffer[];
  /** Non-file fields. Multipart fields given several times become arrays. */
  fields: Record<string, unknown>;
}

const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

/** base64 (or base64url, or a data: URL) → bytes, refusing what is not base64 (Buffer.from would skip it). */
export function decodeBase64Image(s: unknown, what: string): Buffer {
  if (typeof s !== 'string') throw new InputError(`${what} must be a base64 string`);
  const body = s.replace(/^data:[\w/+.-]*(;[\w=.-]+)*;base64,/, '').replace(/\s+/g, '');
  if (body === '') throw new InputError(`${what} is empty`);
  if (!BASE64.test(body)) throw new InputError(`${what} is not valid base64`);
  return Buffer.from(body, body.includes('-') || body.includes('_') ? 'base64url' : 'base64');
}

export async function parseBody(req: FastifyRequest): Promise<ParsedBody> {
  if (req.isMultipart()) {
    const images: Buffer[] = [];
    const fields: Record<string, unknown> = {};
    for await (const part of req.parts()) {
      if (part.type === 'file') {
        const buf = await part.toBuffer(); // throws the 413 past the file size limit
        if (buf.length === 0) throw new InputError(`the uploaded file '${part.filename || part.fieldname}' is empty`);
        images.push(buf);
      } else {
        const v = part.value;
        const prev = fields[part.fieldname];
        fields[part.fieldname] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
      }
    }
    return { images, fields };
  }
  const body = req.body;
  if (body === undefined || body === null) return { images: [], fields: {} };
  if (typeof body !== 'object' || Array.isArray(body)) throw new InputError('the request body must be a JSON object (or multipart/form-data)');
  const { image, images, ...fields } = body as Record<string, unknown>;
  const out: Buffer[] = [];
  if (image !== undefined) out.push(decodeBase64Image(image, 'image'));
  if (images !== undefined) {
    if (!Array.isArray(images)) throw new InputError('images must be an array of base64 strings');
    images.forEach((s, i) => out.push(decodeBase64Image(s, `images[${i}]`)));
  }
  return { images: out, fields };
}

/** An integer field (a JSON number or a form/query string) within [min, max], else the default. */
export function intField(v: unknown, name: string, dflt: number, min: number, max: number): number {
  if (v === undefined || v === '') return dflt;
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) throw new InputError(`${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  return n;
}

/** A text field or list of them ('texts' may repeat in a form; JSON gives an array). */
export function textsField(v: unknown, name: string, maxItems: number): string[] {
  if (v === undefined) return [];
  const list = Array.isArray(v) ? v : [v];
  if (list.length > maxItems) throw new InputError(`${name}: ${list.length} texts; at most ${maxItems} per request`);
  return list.map((t, i) => {
    if (typeof t !== 'string' || t.trim() === '') throw new InputError(`${name}[${i}] must be a non-empty string`);
    return t;
  });
}

/** templates from a form (a name, or JSON text of a list) or JSON (a name or a list). */
export function templatesField(v: unknown): unknown {
  if (typeof v === 'string' && v.trim().startsWith('[')) {
    try {
      return JSON.parse(v) as unknown;
    } catch {
      throw new InputError('templates: not valid JSON');
    }
  }
  return v;
}
