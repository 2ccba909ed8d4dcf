// dsv3 chat: an interactive conversation in the terminal (or over a pipe, one user message per
// line), rendered through the model's own chat template and streamed as it is generated.
//
// Ctrl-C while a reply is being generated stops that reply and returns to the prompt. The partial
// reply stays in the history as far as it was shown, the way chat front ends keep a stopped
// answer, so that a follow-up ("shorter, please") refers to what the user saw. Ctrl-C at the
// prompt only prints how to quit; /exit or end of input (Ctrl-D) ends the session.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "cli/command.h"
#include "cli/generation_options.h"
#include "cli/line_input.h"
#include "cli/reply_printer.h"
#include "core/error.h"
#include "engine/conversation.h"
#include "io/model_config.h"

namespace dsv3::cli {
namespace {

struct ChatOptions {
  GenerationOptions generation;
  std::string system;
  bool verbose = false;
  bool ignore_eos = false;
};

// What the terminal (or pipe) on each standard stream is.
struct Terminal {
  bool input = isatty(STDIN_FILENO) != 0;
  bool output = isatty(STDOUT_FILENO) != 0;
  bool errors = isatty(STDERR_FILENO) != 0;
};

// Status lines go to stderr, dimmed on a terminal, so stdout holds only the replies.
void status(const Terminal& terminal, const std::string& line) {
  if (terminal.errors)
    std::fprintf(stderr, "\x1b[2m%s\x1b[0m\n", line.c_str());
  else
    std::fprintf(stderr, "%s\n", line.c_str());
}

enum class Outcome { finished, max_tokens, context_full, interrupted };

struct Reply {
  std::string text;  // as the user saw it, thinking tags included
  std::int64_t tokens = 0;
  Outcome outcome = Outcome::finished;
  double first_token_seconds = 0.0;
  double seconds = 0.0;
};

// What stays fixed for a session: the model, its engine and the tokenizer.
struct Session {
  const ModelConfig& config;
  const Tokenizer& tokenizer;
  Engine& engine;
  SamplingParams sampling;
  std::vector<std::int32_t> end_of_sequence_ids;
  InterruptHandler& interrupts;
  ReplyPrinter& printer;
};

// Generates and streams one reply, checking for Ctrl-C between engine steps.
Reply generate_reply(Session& session, const std::vector<std::int32_t>& prompt, const SamplingParams& params,
                     bool starts_thinking) {
  Reply reply;
  const auto start = std::chrono::steady_clock::now();
  // Frees the sequence however the reply ends, an exception included, so that it cannot linger
  // in the engine and be stepped along with the next turn's.
  struct FinishOnExit {
    Engine& engine;
    SequenceId id;
    ~FinishOnExit() { engine.finish(id); }
  } finish_on_exit{session.engine, session.engine.add(prompt, params)};
  Tokenizer::StreamDecoder decoder(session.tokenizer, true);
  StopChecker stops(params, session.end_of_sequence_ids);
  ThinkingSplitter splitter(starts_thinking);
  auto show = [&](const std::string& piece) {
    reply.text += piece;
    session.printer.print(splitter.add(piece));
  };
  bool done = false;
  while (!done && session.engine.has_work()) {
    if (session.interrupts.requested()) {
      reply.outcome = Outcome::interrupted;
      break;
    }
    std::span<const TokenEvent> events;  // valid until the next step
    try {
      events = session.engine.step();
    } catch (const CacheFullError&) {
      reply.outcome = Outcome::context_full;
      break;
    }
    for (const TokenEvent& event : events) {
      if (reply.tokens++ == 0)
        reply.first_token_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const StopUpdate update = stops.add(event.sampled.token, decoder.push(event.sampled.token));
      show(update.text);
      if (update.finished || event.finished) {
        const FinishReason reason = stops.finished() ? stops.reason() : event.reason;
        if (reason == FinishReason::max_tokens)
          reply.outcome = *params.max_tokens < *session.sampling.max_tokens ? Outcome::context_full : Outcome::max_tokens;
        done = true;
        break;
      }
    }
  }
  session.engine.finish(finish_on_exit.id);
  const bool stopped_by_string = stops.reason() == FinishReason::stop_string;
  show(stops.finish());
  if (!stopped_by_string) show(decoder.finish());
  session.printer.print(splitter.finish());
  session.printer.end();
  reply.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return reply;
}

std::string reply_summary(const Reply& reply, std::size_t prompt_tokens, bool verbose) {
  std::string line = "[";
  if (reply.outcome == Outcome::interrupted) line += "interrupted; ";
  if (verbose) line += fmt::format("prompt {} tokens; ", prompt_tokens);
  const double decode_seconds = reply.seconds - reply.first_token_seconds;
  line += fmt::format("{} tokens, {:.1f} tokens/s", reply.tokens,
                      reply.tokens > 1 && decode_seconds > 0 ? static_cast<double>(reply.tokens - 1) / decode_seconds
                                                             : 0.0);
  if (verbose) line += fmt::format("; first token after {:.3f} s", reply.first_token_seconds);
  if (reply.outcome == Outcome::max_tokens) line += "; stopped at --max-tokens";
  if (reply.outcome == Outcome::context_full) line += "; the context is full, /reset starts over";
  return line + "]";
}

// A chat needs the model's own template; say so before the model is loaded.
void check_chat_template(const Tokenizer& tokenizer, const std::string& tokenizer_dir) {
  if (tokenizer.chat_template().empty())
    fail("the tokenizer in '{}' has no chat template (its tokenizer_config.json sets no 'chat_template'), and "
         "dsv3 chat renders conversations only with the model's own template",
         tokenizer_dir);
}

std::vector<std::int32_t> end_of_sequence_ids(const Tokenizer& tokenizer, const ModelConfig& config) {
  std::vector<std::int32_t> ids;
  for (const std::int64_t id : config.eos_token_ids) ids.push_back(static_cast<std::int32_t>(id));
  if (!tokenizer.eos_token().empty()) {
    if (const auto eos = tokenizer.token_to_id(tokenizer.eos_token())) ids.push_back(*eos);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

// One user turn: render, check the context, generate, record.
void take_turn(Session& session, Conversation& conversation, const std::string& message, const Terminal& terminal,
               bool verbose) {
  conversation.add_user(message);
  std::string rendered;
  std::vector<std::int32_t> prompt;
  try {
    rendered = conversation.render_prompt();
    prompt = session.tokenizer.encode_chat(rendered);
  } catch (const Error& e) {
    conversation.drop_last();
    status(terminal, fmt::format("dsv3: error: cannot render the conversation: {}", e.what()));
    return;
  }
  const std::int64_t context = std::min(session.config.max_position_embeddings, session.engine.options().cache_tokens);
  const std::int64_t room = context - static_cast<std::int64_t>(prompt.size());
  if (room < 1) {
    conversation.drop_last();
    status(terminal, fmt::format("dsv3: error: the conversation is {} tokens, and the context holds {}: /reset "
                                 "starts a new one",
                                 prompt.size(), context));
    return;
  }
  SamplingParams params = session.sampling;
  params.max_tokens = static_cast<std::int32_t>(std::min<std::int64_t>(*params.max_tokens, room));
  Reply reply;
  try {
    reply = generate_reply(session, prompt, params, prompt_opens_thinking(rendered));
  } catch (const Error& e) {
    session.printer.end();
    conversation.drop_last();
    status(terminal, fmt::format("dsv3: error: the reply failed, and the message is dropped: {}", e.what()));
    return;
  }
  if (reply.outcome == Outcome::interrupted) session.interrupts.clear();
  conversation.add_assistant(reply.text);
  status(terminal, reply_summary(reply, prompt.size(), verbose));
}

int run(ChatOptions& options) {
  GenerationOptions& g = options.generation;
  g.finalise();
  const std::optional<Tokenizer> tokenizer = g.load_tokenizer();
  if (!tokenizer)
    fail("chat needs a tokenizer with a chat template: the model folder '{}' has no tokenizer.json, pass "
         "--tokenizer DIR",
         g.model);
  check_chat_template(*tokenizer, g.tokenizer_dir());
  Conversation conversation(tokenizer->chat_template(), tokenizer->bos_token(), tokenizer->eos_token(), options.system);

  const Terminal terminal;
  const auto load_start = std::chrono::steady_clock::now();
  const Model model = load_model(g.model);
  Engine engine(model, g.engine_options(model.config()));
  SamplingParams sampling = g.sampling;
  const std::vector<std::int32_t> eos_ids = end_of_sequence_ids(*tokenizer, model.config());
  // Ignoring end of sequence is a bias that the sampler can never overcome, not a skipped check,
  // so the engine's own stop on the model's EOS ids stays as it is.
  if (options.ignore_eos)
    for (const std::int32_t id : eos_ids) sampling.logit_bias[id] = -1e30f;
  g.fit_to(*tokenizer, model.config(), sampling);
  sampling.validate(model.config().vocab_size);
  InterruptHandler interrupts;
  ReplyPrinter printer(stdout, terminal.output);
  Session session{model.config(), *tokenizer, engine, sampling, eos_ids, interrupts, printer};
  if (terminal.input)
    status(terminal, fmt::format("loaded '{}' in {:.1f} s; /reset starts over, /exit or Ctrl-D quits", g.model,
                                 std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count()));

  LineReader reader(STDIN_FILENO, interrupts);
  for (;;) {
    if (terminal.input) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    std::string line;
    const ReadResult read = reader.next(line);
    if (read == ReadResult::end_of_input) {
      if (terminal.input) std::fputs("\n", stdout);
      break;
    }
    if (read == ReadResult::interrupted) {
      if (terminal.input) std::fputs("\n", stdout);
      status(terminal, "(press Ctrl-D or type /exit to quit)");
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (line.starts_with('/')) {
      const std::string command = line.substr(0, line.find_last_not_of(" \t") + 1);
      if (command == "/exit") break;
      if (command == "/reset") {
        conversation.reset();
        status(terminal, "(the conversation is cleared)");
      } else {
        status(terminal, fmt::format("unknown command {}: /reset starts over, /exit quits", command));
      }
      continue;
    }
    take_turn(session, conversation, line, terminal, options.verbose);
  }
  return 0;
}

const bool registered = register_command(
    {"chat", "Chat with a model in the terminal, using its chat template",
     [](CLI::App& app) -> Run {
       auto options = std::make_shared<ChatOptions>();
       // Chat replies (and R1's thinking) run longer than a test continuation.
       options->generation.max_tokens = 4096;
       options->generation.add_to(app, 0.6f);
       app.add_option("--system", options->system, "System prompt, the first message of every conversation");
       app.add_flag("--verbose", options->verbose, "Also show the prompt size and time to first token per reply");
       app.add_flag("--ignore-eos", options->ignore_eos,
                    "Never end a reply at the end-of-sequence token (replies run to --max-tokens)");
       return [options] { return run(*options); };
     }});

}  // namespace
}  // namespace dsv3::cli
