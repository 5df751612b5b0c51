//! ICAI's prompts, carried over as data with their source: rdnfn/icai at commit
//! cb88e6588e9a01e8c1f216ea3cfe1b7461ddee7d (Apache-2.0), `src/inverse_cai/experiment/config/
//! prompts.py` (`DEFAULT_GENERATOR_PROMPT_V2`, `DEFAULT_VOTING_PROMPT`,
//! `DEFAULT_CLUSTER_SUMMARY_PROMPT`) and `src/inverse_cai/assets/alpacaeval_annotator_configs/
//! gpt4omini_fn_constitutional_base_neutral_v2/constitutional_prompt.txt` (the annotator given
//! the constitution). Each is a system and a user message, split at ICAI's `<|im_start|>` /
//! `<|im_end|>` markers and stripped as alpaca_eval's `prompt_to_chatml` does; fields are
//! Python `str.format` fields, filled by [`fill`].
//!
//! The annotator without a constitution is ours: ICAI's (`alpaca_eval_gpt4omini_fn_noinstruction`)
//! ranks through OpenAI function calling, which a plain OpenAI-compatible server does not
//! offer; [`UNGUIDED`] is the constitutional prompt with the rules left out, so the two
//! annotators differ only in the constitution.

use crate::kit::llm::Message;
use crate::kit::pystr::py_repr;

/// A system and a user message.
pub struct Template {
    pub system: &'static str,
    pub user: &'static str,
}

pub const GENERATOR: Template = Template {
    system: "Your job is to analyse data and come up with explanations. You're an expert at this.",
    user: "Selected sample:\n{preferred_sample}\n\nOther sample:\n{rejected_sample}\n\nGiven the data above, why do you \
           think the annotator selected the given sample over the other sample? Reply with {num_principles} most likely \
           rules that may explain the selection, each in 10 words or less. Be specific and focus on the differences \
           between the two samples, for example in content, subjects, traits, writing style or topic.  Always suggest \
           as rule that starts with 'Select the response that...'.\n\nReply as a json similar to: {{\"principles\": \
           [\"<YOUR PRINCIPLE TEXT>\", \"<YOUR NEXT PRINCIPLE TEXT>\",...]}}.\nDO NOT respond with any text apart from \
           the json format above!\nDO NOT add markdown formatting around JSON.\nONLY REPLY IN JSON FORMAT",
};

pub const VOTING: Template = Template {
    system: "Your job is to check which sample is should be selected according to the given rules. You're an expert \
             at this.",
    user: "Sample A:\n{sample_a}\n\nSample B:\n{sample_b}\n\nGiven the samples data above, check for each rule below \
           which sample should be selected:\n{summaries}\n\nAnswer in json format, e.g. {{0: \"A\", 1: \"B\", 2: \
           \"None\", 3: \"Both\",...}}.\nPut \"A\" if A is selected according to that rule. \nPut \"B\" if B is \
           selected according to that rule.\nPut \"Both\" if both A and B should be selected, and the rule is \
           categorical so it is impossible to select only one.\nPut \"None\" if a rule is not applicable to the two \
           samples.\nOtherwise, no ties are allowed, only one of \"A\", \"B\", \"Both\" or \"None\".\nVote for all \
           rules, even if you are unsure.\nDO NOT respond with any text apart from the json format above!\nDO NOT add \
           markdown formatting around JSON.\nONLY REPLY IN JSON FORMAT",
};

pub const CLUSTER_SUMMARY: Template = Template {
    system: "Your job is to summarize the principles below as a single similar principle. Ignore outlier principles. \
             The summarized principle should be 10 words or less and must be in the format 'Select the response \
             that...'.",
    user: "{principles}",
};

pub const CONSTITUTIONAL: Template = Template {
    system: "You are a helpful instruction-following assistant that selects outputs according to rules.",
    user: "Select the output (a) or (b) according to the following rules (if they apply):\n{constitution}\n\nYou MUST \
           follow the rules above if they apply.\nSelect the output randomly if they do not apply.\n\nYour answer \
           should ONLY contain: Output (a) or Output (b).\n\n# Task:\nNow the task, do not explain your answer, just \
           say Output (a) or Output (b).\n\n## Output (a):\n{output_1}\n\n## Output (b):\n{output_2}\n\n## Note:\nIf \
           the rules do not apply, you MUST select randomly. DO NOT follow you own opinion.\n\n## Which output should \
           be selected according to the rules above, Output (a) or Output (b)?",
};

/// Ours (see the module doc): [`CONSTITUTIONAL`] without the rules.
pub const UNGUIDED: Template = Template {
    system: "You are a helpful instruction-following assistant that selects outputs.",
    user: "Select the better output, (a) or (b).\n\nYour answer should ONLY contain: Output (a) or Output (b).\n\n# \
           Task:\nNow the task, do not explain your answer, just say Output (a) or Output (b).\n\n## Output \
           (a):\n{output_1}\n\n## Output (b):\n{output_2}\n\n## Which output is better, Output (a) or Output (b)?",
};

/// Python's `template.format(**fields)`: `{name}` replaced, `{{` and `}}` unescaped. A field
/// not given stays as written (ICAI's `parse_prompt` only fills the fields it has).
pub fn fill(template: &str, fields: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        let field = tail.strip_prefix('{').and_then(|t| t.find('}').map(|end| &t[..end]));
        match field.and_then(|name| fields.iter().find(|(k, _)| *k == name)) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &tail[name.len() + 2..];
            }
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl Template {
    /// The chat, fields filled.
    pub fn messages(&self, fields: &[(&str, &str)]) -> Vec<Message> {
        vec![Message::new("system", fill(self.system, fields)), Message::new("user", fill(self.user, fields))]
    }
}

/// The principles of one voting prompt as ICAI writes them: Python's `repr` of a dict from
/// 0-based number to principle, `{0: 'Select ...', 1: '...'}`.
pub fn numbered(principles: &[&str]) -> String {
    let items: Vec<String> = principles.iter().enumerate().map(|(i, p)| format!("{i}: {}", py_repr(p))).collect();
    format!("{{{}}}", items.join(", "))
}

/// The constitution: `"1. ...\n2. ..."` (ICAI's `060_constitution.json`).
pub fn constitution(principles: &[&str]) -> String {
    principles.iter().enumerate().map(|(i, p)| format!("{}. {p}", i + 1)).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_fill_as_python_format_does() {
        // Expected: Python's "...".format(n=2, x="{y}") on the same templates.
        assert_eq!(fill("{{\"p\": [{n}]}} {x}", &[("n", "2"), ("x", "{y}")]), "{\"p\": [2]} {y}");
        assert_eq!(fill("a {unknown} b", &[]), "a {unknown} b");
        let user =
            fill(GENERATOR.user, &[("preferred_sample", "P"), ("rejected_sample", "R"), ("num_principles", "2")]);
        assert!(user.starts_with("Selected sample:\nP\n\nOther sample:\nR\n\nGiven the data above"));
        assert!(user.contains("Reply with 2 most likely rules"));
        assert!(user.contains("Reply as a json similar to: {\"principles\": [\"<YOUR PRINCIPLE TEXT>\""));
    }

    #[test]
    fn the_voting_prompt_numbers_principles_as_python_prints_a_dict() {
        assert_eq!(
            numbered(&["Select the response that is short", "it's"]),
            "{0: 'Select the response that is short', 1: \"it's\"}"
        );
        let user = fill(VOTING.user, &[("sample_a", "X"), ("sample_b", "Y"), ("summaries", "{0: 'p'}")]);
        assert!(
            user.contains("which sample should be selected:\n{0: 'p'}\n\nAnswer in json format, e.g. {0: \"A\", 1:")
        );
    }

    #[test]
    fn the_constitution_is_numbered_lines() {
        assert_eq!(constitution(&["Select a.", "Select b."]), "1. Select a.\n2. Select b.");
        assert_eq!(constitution(&[]), "");
    }
}
