"""mkdocs hook: the CLI reference, generated from the argparse parsers.

`docs/cli.md` marks where each command's reference goes with a line
`<!-- cli: NAME -->` (NAME a command, or `segment-anything-tfds` for the
program itself). At build time this hook replaces each marker with the
parser's usage, description, example (its epilog) and one table per
argument group: every flag with its metavar, default and help, as
`segment_anything_tfds.cli.build_parser()` makes them. A command without a
marker, or a marker naming no command, fails the build.

The program's table of commands links each to its section (`## NAME`), so
`mkdocs build --strict` also fails on a command without one.

The package is imported when the page is rendered, not when mkdocs loads
this file, so the site builds wherever `segment_anything_tfds` imports.
`reference_page(text)` is what the hook does to the page; the tests call it.
It reads argparse's parsers through their (stable) private attributes.
"""
# pylint: disable=protected-access

from __future__ import annotations

import argparse
import html
import re

PAGE = 'cli.md'
_MARKER = re.compile(r'^<!-- cli: ([a-z][a-z-]*) -->$', re.M)
_USAGE_WIDTH = 80


def parsers() -> dict[str, argparse.ArgumentParser]:
  """The program's parser and each command's, by name."""
  from segment_anything_tfds import cli  # pylint: disable=g-import-not-at-top
  parser = cli.build_parser()
  out = {parser.prog: parser}
  out.update(_subcommands(parser).choices)
  return out


def _subcommands(parser: argparse.ArgumentParser) -> argparse.Action:
  return next(a for a in parser._actions
              if isinstance(a, argparse._SubParsersAction))


def reference_page(text: str) -> str:
  """`text` (docs/cli.md) with each marker replaced by its reference."""
  found = parsers()
  named = _MARKER.findall(text)
  unknown = sorted(set(named) - set(found))
  missing = sorted(set(found) - set(named))
  if unknown or missing:
    raise ValueError(f'{PAGE}: markers for unknown commands {unknown};'
                     f' commands without a marker {missing}')
  return _MARKER.sub(lambda m: render(found[m.group(1)]), text)


def render(parser: argparse.ArgumentParser) -> str:
  """Markdown for one parser: usage, description, example, flag tables."""
  formatter = parser.formatter_class(prog=parser.prog, width=_USAGE_WIDTH)
  formatter.add_usage(parser.usage, parser._actions,
                      parser._mutually_exclusive_groups)
  out = ['```text', formatter.format_help().strip(), '```', '']
  if parser.description:
    out += [_inline(parser.description), '']
  out += _epilog(parser.epilog)
  for group in parser._action_groups:
    out += _group_table(parser, group)
  for group in parser._mutually_exclusive_groups:
    flags = ', '.join(f'`{a.option_strings[0]}`'
                      for a in group._group_actions)
    need = 'exactly one' if group.required else 'at most one'
    out += [f'Of {flags}: {need}.', '']
  return '\n'.join(out)


def _epilog(epilog: str | None) -> list[str]:
  """An `example: ...` epilog as a shell block; other text as a paragraph."""
  if not epilog:
    return []
  if epilog.startswith('example: '):
    return ['Example:', '', '```sh', epilog[len('example: '):], '```', '']
  return [_inline(epilog), '']


def _group_table(parser, group) -> list[str]:
  actions = [a for a in group._group_actions
             if not isinstance(a, argparse._HelpAction)]
  if not actions:
    return []
  out = [f'**{_inline(group.title)}**', '']
  if group.description:
    out += [_inline(group.description), '']
  out += ['| argument | default | meaning |', '|---|---|---|']
  for action in actions:
    out.append(f'| {_flag(action)} | {_default(action)} |'
               f' {_help(parser, action)} |')
  return out + ['']


def _flag(action: argparse.Action) -> str:
  """`--name METAVAR` (each option string), or a positional's name."""
  if isinstance(action, argparse._SubParsersAction):
    return f'`{action.metavar or action.dest}`'
  value = _metavar(action)
  names = action.option_strings or [value]
  if not action.option_strings or action.nargs == 0:
    return ', '.join(f'`{n}`' for n in names)
  return ', '.join(f'`{n} {value}`' for n in names)


def _metavar(action: argparse.Action) -> str:
  if action.metavar is not None:
    return str(action.metavar)
  if action.choices is not None:
    return '{' + ','.join(map(str, action.choices)) + '}'
  return action.dest.upper() if action.option_strings else action.dest


def _default(action: argparse.Action) -> str:
  """The default of a flag that takes a value; blank when it has none."""
  if action.required and action.option_strings:
    return 'required'
  if (action.nargs == 0 or action.default is None
      or action.default == argparse.SUPPRESS):
    return ''
  return f'`{action.default}`'


def _help(parser, action: argparse.Action) -> str:
  if isinstance(action, argparse._SubParsersAction):
    return '<br>'.join(f'[`{c.dest}`](#{c.dest}): {_inline(c.help or "")}'
                       for c in action._choices_actions)
  text = action.help or ''
  if '%(' in text:  # As argparse expands it in --help.
    text = text % dict(vars(action), prog=parser.prog)
  return _inline(text)


def _inline(text: str) -> str:
  """Plain text as inline Markdown: `code` kept, everything else literal."""
  text = ' '.join(text.split())
  parts = text.split('`')
  if len(parts) % 2 == 0:  # An unpaired backtick: all of it literal.
    return _literal(text)
  parts[::2] = [_literal(p) for p in parts[::2]]  # Outside code spans.
  return '`'.join(parts)


def _literal(text: str) -> str:
  """Text that Markdown shows as it is (no emphasis, links, tags, cells)."""
  return re.sub(r'([\\*_\[\]|#`])', r'\\\1',
                html.escape(text, quote=False))


def on_page_markdown(markdown: str, page, **unused_kwargs) -> str:
  """mkdocs event: fills in the CLI reference page."""
  if page.file.src_uri != PAGE:
    return markdown
  return reference_page(markdown)
