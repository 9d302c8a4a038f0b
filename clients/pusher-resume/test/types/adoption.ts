// Type-checks the README's adoption lines against the real pusher-js and Laravel Echo types
// (npm run typecheck), resolved as a bundler (Vite, webpack) does: a pusher-js Pusher and an
// Echo instance must be accepted as they are.
import Echo from 'laravel-echo';
import Pusher from 'pusher-js';

import { type Gap, type ResumeHandle, resume } from '@turnout/pusher-resume';

const pusher = new Pusher('app-key', { cluster: 'mt1', wsHost: 'ws.example.com' });
const handle: ResumeHandle = resume(pusher);
handle.on('gap', (gap: Gap) => console.log(gap.channel, gap.missed, gap.from.offset, gap.to.epoch));
handle.on('delivery', ({ channel, offset, epoch }) => console.log(channel, offset, epoch));

const echo = new Echo({ broadcaster: 'pusher', key: 'app-key', cluster: 'mt1', client: pusher });
resume(echo, { onGap: (gap) => console.log(gap.reason) });
