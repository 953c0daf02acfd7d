"""Slack front-end: mentions, DMs and threads answered with streamed, formatted replies.

`app` registers the listeners on either transport (`http_mode` serves the Events API), `events` says
which events are questions, `adapter` hands them to the conversation core (`bots.conversation`),
`context` reads the thread into the request, `sink` writes one answer (Slack's streaming API or
`chat.update`), `blocks` and `formatting` shape the messages (Markdown, or mrkdwn), `controls` handles
the buttons, `notices` the short replies. `manifest.yaml` is the Slack app to install.
"""

from bots.slack.app import SlackApp, build_slack_app, run_slack

__all__ = ["SlackApp", "build_slack_app", "run_slack"]
