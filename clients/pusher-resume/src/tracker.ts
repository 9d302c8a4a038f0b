/**
 * The position bookkeeping of one client, as a pure state machine: it sees every raw frame
 * before the client library does and every subscribe it sends, and decides what the
 * application may see. No I/O, no pusher-js: unit-testable on its own.
 *
 * The wire format is turnout's (docs/protocol-extensions.md): channel events carry
 * `offset` (dense per channel and epoch) and `epoch`; `pusher_internal:subscription_succeeded`
 * carries the subscription's start `offset`, `epoch` (or null) and, when the subscribe carried a
 * position, `recovered`.
 */

/** Where a channel stands: the last event processed (or the start of a fresh subscription). */
export interface Position {
  readonly offset: number;
  /** Opaque; "" means "the channel's first epoch since I subscribed" (the server knew none). */
  readonly epoch: string;
}

/** Why a resume could not fill the gap (the server only says `recovered: false`). */
export type GapReason =
  /** The channel's history was reset (expired, or Redis lost its data): a new epoch. */
  | 'epoch_changed'
  /** Same epoch, but the missed events are out of retention, too many, or history is off. */
  | 'not_recoverable';

/** Told to the application when a resume came back `recovered: false`. */
export interface Gap {
  readonly channel: string;
  readonly reason: GapReason;
  /** The position the client resumed from: its last event before the gap. */
  readonly from: Position;
  /** Where the new subscription starts: live events follow from `to.offset + 1`. */
  readonly to: Position;
  /**
   * How many events the application missed: `to.offset - from.offset` in the same epoch,
   * null when the epoch changed or was unknown (the count is unknowable then).
   */
  readonly missed: number | null;
}

/** What happened to the client since the tracker was created. */
export interface ResumeStats {
  /** Channel events let through to the application. */
  delivered: number;
  /** Channel events dropped because their position was already processed. */
  duplicatesDropped: number;
  /** Subscribes sent with a position. */
  resumes: number;
  /** Resumes answered `recovered: true`. */
  recovered: number;
  /** Resumes answered `recovered: false` (each one also reported as a Gap). */
  gaps: number;
  /** Live events that started a new epoch while subscribed (history reset). */
  epochChanges: number;
}

/** What to do with one frame. */
export type Verdict =
  | { readonly deliver: true; readonly gap?: Gap }
  | { readonly deliver: false; readonly reason: 'duplicate' };

const DELIVER: Verdict = Object.freeze({ deliver: true });
const DUPLICATE: Verdict = Object.freeze({ deliver: false, reason: 'duplicate' });

interface Frame {
  event?: unknown;
  channel?: unknown;
  offset?: unknown;
  epoch?: unknown;
  recovered?: unknown;
}

function isOffset(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

export class PositionTracker {
  private readonly positions = new Map<string, Position>();
  /** Channels whose latest subscribe carried a position, awaiting subscription_succeeded. */
  private readonly pending = new Map<string, Position>();
  readonly stats: ResumeStats = {
    delivered: 0,
    duplicatesDropped: 0,
    resumes: 0,
    recovered: 0,
    gaps: 0,
    epochChanges: 0,
  };

  /** The position of every channel that has one (a copy). */
  snapshot(): Map<string, Position> {
    return new Map(this.positions);
  }

  position(channel: string): Position | undefined {
    return this.positions.get(channel);
  }

  /**
   * A subscribe is about to be sent: the position to add to it, if any. Remembered so the
   * answer can be matched with what was asked.
   */
  onSubscribe(channel: string): Position | undefined {
    const position = this.positions.get(channel);
    if (position === undefined) {
      this.pending.delete(channel);
      return undefined;
    }
    this.pending.set(channel, position);
    this.stats.resumes += 1;
    return position;
  }

  /** The application unsubscribed for good: a later subscribe starts fresh. */
  forget(channel: string): void {
    this.positions.delete(channel);
    this.pending.delete(channel);
  }

  /** The connection is gone: subscribes in flight will never be answered. */
  onDisconnect(): void {
    this.pending.clear();
  }

  /** Judge one decoded frame (any JSON value the server sent). */
  onFrame(frame: unknown): Verdict {
    if (frame === null || typeof frame !== 'object') return DELIVER;
    const { event, channel, offset, epoch, recovered } = frame as Frame;
    if (typeof channel !== 'string' || typeof event !== 'string') return DELIVER;
    if (event === 'pusher_internal:subscription_succeeded') {
      return this.onSubscribed(channel, offset, epoch, recovered);
    }
    if (event.startsWith('pusher_internal:') || event.startsWith('pusher:')) return DELIVER;
    // A server that does not sequence (plain Pusher, Soketi, Reverb): nothing to track.
    if (!isOffset(offset) || typeof epoch !== 'string') return DELIVER;

    const known = this.positions.get(channel);
    if (known !== undefined) {
      if (known.epoch === epoch || known.epoch === '') {
        if (offset <= known.offset) {
          this.stats.duplicatesDropped += 1;
          return DUPLICATE;
        }
      } else {
        // The history was reset while subscribed: offsets start again in the new epoch.
        this.stats.epochChanges += 1;
      }
    }
    this.positions.set(channel, { offset, epoch });
    this.stats.delivered += 1;
    return DELIVER;
  }

  private onSubscribed(
    channel: string,
    offset: unknown,
    epoch: unknown,
    recovered: unknown,
  ): Verdict {
    const asked = this.pending.get(channel);
    this.pending.delete(channel);
    if (!isOffset(offset)) return DELIVER; // not a sequencing server
    const start: Position = { offset, epoch: typeof epoch === 'string' ? epoch : '' };

    if (asked !== undefined && recovered === true) {
      // The replay (asked.offset + 1 .. offset) follows; positions keep coming from it.
      this.stats.recovered += 1;
      const known = this.positions.get(channel);
      if (known !== undefined && known.epoch === '' && start.epoch !== '') {
        this.positions.set(channel, { offset: known.offset, epoch: start.epoch });
      }
      return DELIVER;
    }
    this.positions.set(channel, start);
    if (asked !== undefined && recovered === false) {
      this.stats.gaps += 1;
      // From epoch "" (the channel had no epoch when we subscribed) the count is unknown.
      const sameEpoch = asked.epoch === start.epoch;
      const gap: Gap = {
        channel,
        reason: sameEpoch || asked.epoch === '' ? 'not_recoverable' : 'epoch_changed',
        from: asked,
        to: start,
        missed: sameEpoch ? Math.max(0, start.offset - asked.offset) : null,
      };
      return { deliver: true, gap };
    }
    return DELIVER;
  }
}
