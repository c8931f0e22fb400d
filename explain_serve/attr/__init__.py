"""Captum-compatible attribution methods: ``from explain_serve.attr import IntegratedGradients``.

Names resolve lazily to their modules, so importing one method does not import them all.
"""
from importlib import import_module

_EXPORTS = {
    # gradient methods
    "Saliency": "saliency",
    "InputXGradient": "input_x_gradient",
    "IntegratedGradients": "integrated_gradients",
    "GradientShap": "gradient_shap",
    "InputBaselineXGradient": "gradient_shap",
    "DeepLift": "deep_lift",
    "DeepLiftShap": "deep_lift",
    "GuidedBackprop": "guided_backprop",
    "Deconvolution": "guided_backprop",
    "LayerGradCam": "grad_cam",
    "GuidedGradCam": "grad_cam",
    "NoiseTunnel": "noise_tunnel",
    # perturbation methods
    "FeatureAblation": "feature_ablation",
    "FeaturePermutation": "feature_permutation",
    "Occlusion": "occlusion",
    "ShapleyValueSampling": "shapley",
    "ShapleyValues": "shapley",
    "LimeBase": "lime",
    "Lime": "lime",
    "KernelShap": "kernel_shap",
    "InterpretableLinearModel": "lime",
    "get_exp_kernel_similarity_function": "lime",
    "default_perturb_func": "lime",
    "default_from_interp_rep_transform": "lime",
    "DataLoaderAttribution": "dataloader_attr",
    "InputRole": "dataloader_attr",
    # layer methods
    "LayerIntegratedGradients": "layer.integrated_gradients",
    "LayerActivation": "layer.activation",
    "LayerGradientXActivation": "layer.activation",
    "LayerConductance": "layer.conductance",
    "InternalInfluence": "layer.conductance",
    "LayerDeepLift": "layer.deep_lift",
    "LayerDeepLiftShap": "layer.deep_lift",
    "LayerGradientShap": "layer.gradient_shap",
    "LayerFeatureAblation": "layer.perturbation",
    "LayerFeaturePermutation": "layer.perturbation",
    # neuron methods
    "NeuronGradient": "neuron.gradient",
    "NeuronIntegratedGradients": "neuron.gradient",
    "NeuronConductance": "neuron.gradient",
    "NeuronGradientShap": "neuron.gradient",
    "NeuronFeatureAblation": "neuron.gradient",
    "NeuronDeepLift": "neuron.hooked",
    "NeuronDeepLiftShap": "neuron.hooked",
    "NeuronGuidedBackprop": "neuron.hooked",
    "NeuronDeconvolution": "neuron.hooked",
    # LRP
    "LRP": "lrp",
    "LayerLRP": "lrp",
    "PropagationRule": "lrp_rules",
    "EpsilonRule": "lrp_rules",
    "GammaRule": "lrp_rules",
    "Alpha1_Beta0_Rule": "lrp_rules",
    "IdentityRule": "lrp_rules",
    "Addition_Module": "custom_modules",
    # embedding helpers
    "configure_interpretable_embedding_layer": "embeddings",
    "remove_interpretable_embedding_layer": "embeddings",
    "interpretable_embedding": "embeddings",
    "InterpretableEmbeddingBase": "embeddings",
    "TokenReferenceBase": "embeddings",
    # interpretable inputs and LLM attribution
    "InterpretableInput": "interpretable_input",
    "TextTemplateInput": "interpretable_input",
    "TextTokenInput": "interpretable_input",
    "ImageMaskInput": "interpretable_input",
    "ProductBaselines": "baselines",
    "LLMAttribution": "llm.perturbation",
    "LLMGradientAttribution": "llm.gradient",
    "LLMAttributionResult": "llm.result",
    "RemoteLLMAttribution": "llm.remote",
    "RemoteLLMProvider": "llm.remote",
    "VLLMProvider": "llm.remote",
    # streaming summaries of attributions
    "Summarizer": "summarizer",
    "SummarizerSingleTensor": "summarizer",
    "ClassSummarizer": "summarizer",
    "Stat": "stat",
    "StatValue": "stat",
    "CommonStats": "stat",
    "Mean": "stat",
    "Var": "stat",
    "StdDev": "stat",
    "MSE": "stat",
    "Min": "stat",
    "Max": "stat",
    "Sum": "stat",
    "Count": "stat",
    # bases
    "Attribution": "_base",
    "GradientAttribution": "_base",
    "PerturbationAttribution": "_base",
    "LayerAttribution": "_base",
    "NeuronAttribution": "_base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explain_serve.attr' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
